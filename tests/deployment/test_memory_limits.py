"""The Deployment's memory against the formula (pipeline/sizing.py) for the topology it
mounts: the limit at least the bound, the request at least the baseline (docs/reliability.md
"Memory: what bounds it")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.sizing import BASELINE_BYTES, memory_budget
from pipeline.topology.loader import load_topology

pytestmark = pytest.mark.deployment

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SASL_ENV = {"KAFKA_SASL_USERNAME": "user", "KAFKA_SASL_PASSWORD": "secret"}
PARTITIONS_ANNOTATION = "recommendation-pipeline/input-partitions"
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (512Mi, 1Gi, 1.5G, 1073741824) in bytes."""
    found = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|K|M|G|)", str(text))
    assert found, f"not a memory quantity this test reads: {text!r}"
    return int(float(found.group(1)) * UNITS[found.group(2)])


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def pipeline_container() -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = [d for d in documents("deployment.yaml") if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "pipeline"]
    return pod, container


def mounted_topology_file() -> Path:
    """The file `pipeline run` reads: its argument's mount, that volume's ConfigMap, the
    kustomization's generator of it, and the file it is made of."""
    pod, container = pipeline_container()
    path = Path(container["args"][container["args"].index("run") + 1])
    (mount,) = [m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (kustomization,) = documents("kustomization.yaml")
    (generator,) = [
        g for g in kustomization["configMapGenerator"] if g["name"] == volume["configMap"]["name"]
    ]
    (source,) = [f for f in generator["files"] if Path(f.split("=")[-1]).name == path.name]
    return K8S / source.split("=")[-1]


def input_partitions() -> int:
    """The most partitions one member may hold: the input topic's count, as scaledobject.yaml
    assumes it (maxReplicaCount follows it)."""
    (scaled,) = [d for d in documents("scaledobject.yaml") if d["kind"] == "ScaledObject"]
    return int(scaled["metadata"]["annotations"][PARTITIONS_ANNOTATION])


def test_the_mounted_topology_is_the_deploy_one() -> None:
    assert mounted_topology_file() == K8S / "recommendations.yaml"


def test_the_memory_limit_covers_the_formulas_bound_and_the_request_the_baseline() -> None:
    budget = memory_budget(load_topology(mounted_topology_file(), env=SASL_ENV), input_partitions())
    _, container = pipeline_container()
    resources = container["resources"]
    limit = quantity_bytes(resources["limits"]["memory"])
    request = quantity_bytes(resources["requests"]["memory"])
    assert limit >= budget.total, (limit >> 20, budget.total >> 20)
    assert request >= BASELINE_BYTES, (request >> 20, BASELINE_BYTES >> 20)
    assert request <= limit
    # the shipped numbers are the formula's, not just any larger ones
    assert (request, limit) == (budget.request, budget.limit), (request >> 20, limit >> 20)


def test_quantities_are_read_as_kubernetes_reads_them() -> None:
    assert quantity_bytes("512Mi") == 512 << 20
    assert quantity_bytes("1Gi") == 1 << 30
    assert quantity_bytes("1.5Gi") == 3 << 29
    assert quantity_bytes("1G") == 10**9
