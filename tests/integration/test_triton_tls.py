"""TLS to the real Triton: a server started with --grpc-use-ssl-mutual and a certificate
authority made for the test. The pipeline with the CA and its client certificate answers
every event; an untrusted server certificate, or no client certificate, stops `pipeline
run` at start with exit 2 and one message (no retry loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.devstack.dev import live_events
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.triton import EmbeddedTriton
from pipeline.recsys.generator import GeneratorConfig
from pipeline.topology.schema import Topology
from tests.certs import Pki, make_pki
from tests.integration.harness import RawIn, create_topics, run_pipeline_command, run_until_accounted

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_triton(
    stack: EmbeddedStack, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedTriton]:
    triton = EmbeddedTriton(
        tmp_path_factory.mktemp("tls-triton"),
        stack.model_repository,
        extra_args=(
            "--grpc-use-ssl=true",
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={pki.server_cert}",
            f"--grpc-server-key={pki.server_key}",
            f"--grpc-root-cert={pki.ca}",
        ),
    )
    with triton.running(triton.ready, 120):
        yield triton


def _topology(stack: EmbeddedStack, triton: EmbeddedTriton, tls: dict[str, str]) -> dict[str, Any]:
    data = topology_on_stack(stack)
    data["model"] = {**data["model"], "url": triton.grpc_url, "tls": tls}
    return data


async def test_the_pipeline_answers_over_mutual_tls(stack, pki: Pki, tls_triton: EmbeddedTriton) -> None:
    events = live_events(GeneratorConfig(seed=3), 300)
    records: list[RawIn] = [(str(e["user_id"]).encode(), orjson.dumps(e), []) for e in events]
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    topology = Topology.model_validate(_topology(stack, tls_triton, tls))
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0, summary


@pytest.mark.parametrize(
    ("case", "tls"),
    [
        ("an untrusted server certificate", {"ca_file": "other_ca"}),
        ("no client certificate", {"ca_file": "ca"}),
    ],
)
def test_a_tls_misconfiguration_stops_at_start(
    stack, pki: Pki, tls_triton: EmbeddedTriton, tmp_path: Path, case: str, tls: dict[str, str]
) -> None:
    files = {k: str(getattr(pki, v)) for k, v in tls.items()}
    path = tmp_path / "topology.yaml"
    data = _topology(stack, tls_triton, files)
    asyncio.run(create_topics(Topology.model_validate(data)))  # the model check is what fails
    path.write_text(yaml.safe_dump(data))
    done = run_pipeline_command("run", path)
    assert done.returncode == 2, (case, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline stopped: model.tls: the TLS handshake"), (case, last)
