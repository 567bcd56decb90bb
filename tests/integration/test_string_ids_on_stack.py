"""String ids end to end on the real stack: a customer's CSV with ids like ``cust-18`` and
``SKU-00018`` trained (`pipeline train --file`), served by a real Triton on that repository,
replayed (`pipeline replay`) through `pipeline run`: every recommendation names its user
and its items as the file did, and the audit finds nothing lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.triton import EmbeddedTriton
from pipeline.devstack.worker import PipelineProcess
from pipeline.kafka_io import ensure_topology_topics, read_to_end
from pipeline.topology.schema import Topology
from tests.integration.harness import ROOT, run_pipeline_command
from tests.integration.test_replay_tool import replay_args, save

pytestmark = pytest.mark.integration

TOPOLOGIES = ROOT / "topologies"
ROWS = 2_000
MAPPING = """\
user: customer
item: sku
timestamp: {column: ordered_at, unit: s}
type: {column: action, values: {bought: purchase, clicked: click, viewed: view}}
event_id: null
"""


def write_orders(path: Path) -> tuple[set[str], set[str]]:
    """Orders of 80 customers over 120 SKUs, clustered by taste; returns both id sets."""
    rng = np.random.default_rng(18)
    customers = [f"cust-{n}" for n in range(80)]
    skus = [f"SKU-{n:05d}" for n in range(120)]
    lines = ["customer,sku,ordered_at,action"]
    for row in range(ROWS):
        user = int(rng.integers(len(customers)))
        item = (user % 6) * 20 + int(rng.integers(20)) if rng.random() < 0.8 else int(rng.integers(len(skus)))
        action = ("viewed", "clicked", "bought")[int(rng.integers(3))]
        lines.append(f"{customers[user]},{skus[item]},{1_500_000_000 + row},{action}")
    path.write_text("\n".join(lines) + "\n")
    return set(customers), set(skus)


async def test_string_ids_through_train_serve_replay_and_the_output(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    orders, mapping, repository = tmp_path / "orders.csv", tmp_path / "orders.yaml", tmp_path / "repo"
    customers, skus = write_orders(orders)
    mapping.write_text(MAPPING)
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            "--file",
            orders,
            "--mapping",
            mapping,
            "--out",
            repository,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = orjson.loads(trained.stdout.splitlines()[-1])
    assert summary["input"]["interactions"] == ROWS and summary["input"]["string_items"] == len(skus)

    triton = EmbeddedTriton(tmp_path / "triton", repository)
    with triton.running(triton.ready, 180):
        data = topology_on_stack(stack, base=TOPOLOGIES / "backfill.yaml")
        data["model"]["url"] = triton.grpc_url
        topology = Topology.model_validate(data)
        await ensure_topology_topics(topology)
        path = save(data, tmp_path / "backfill.yaml")
        worker = PipelineProcess(topology, tmp_path / "worker")
        worker.start_ready()
        try:
            replayed = subprocess.run(
                replay_args(path, "--file", orders, "--mapping", mapping),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert replayed.returncode == 0, replayed.stderr[-3000:]
            assert orjson.loads(replayed.stdout.splitlines()[-1])["acknowledged"] == ROWS
            audit = await audited(path, ROWS)
        finally:
            worker.stop(worker.stop_grace_s)
    assert audit["lost"] == 0 and audit["in_flight"] == 0 and audit["events_in"] == ROWS, audit
    assert audit["dead_letters"] == 0, audit["dead_letter_reasons"]

    outputs = [rec async for rec in read_to_end(topology.broker, topology.sink.topic)]
    assert outputs
    for rec in outputs:
        doc = orjson.loads(rec.value)
        assert doc["user_id"] in customers and rec.key == doc["user_id"].encode()
        named = [item["item_id"] for item in doc["items"]]
        assert len(named) == 10 and set(named) <= skus, named
    first = orjson.loads(outputs[0].value)
    print(f"{len(outputs)} recommendations for {ROWS} events, e.g. {first['user_id']}: {first['items'][:2]}")


async def audited(path: Path, events: int) -> dict[str, Any]:
    """`pipeline audit` once every input is answered (bounded wait): --in-flight-ms 0, as
    an input not answered yet would otherwise count in flight, not lost."""
    deadline = time.monotonic() + 90
    while True:
        done = run_pipeline_command("audit", path, "--in-flight-ms", "0", timeout_s=120)
        audit: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
        if (audit["lost"] == 0 and audit["events_in"] == events) or time.monotonic() > deadline:
            return audit
        time.sleep(2)
