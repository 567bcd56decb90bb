"""`pipeline replay --topic` (also scripts/replay.py) on the real broker: a time range of a
topic lands in the backfill topic, exactly, even though the embedded broker answers
offsets_for_times wrongly; the source records' headers are kept and the replay's added."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import orjson
import pytest
import yaml

from pipeline import kafka_clients
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import broker_at, ensure_topics, read_to_end
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration
BASE_MS = 1_764_000_000_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def test_replay_of_a_time_range(stack, tmp_path) -> None:
    source, target = f"src-{uuid.uuid4().hex[:8]}", f"bf-{uuid.uuid4().hex[:8]}"
    topology = tmp_path / "backfill.yaml"
    topology.write_text(yaml.safe_dump(topology_on_stack(stack, base=ROOT / "topologies" / "backfill.yaml")))
    bootstrap = stack.broker.bootstrap
    broker = broker_at(bootstrap)
    await ensure_topics(broker, [source], 3)
    producer = kafka_clients.producer(broker, client_suffix="-test")
    await producer.start()
    futures = [
        await producer.send(
            source,
            orjson.dumps({"n": i}),
            key=str(i % 7).encode(),
            timestamp_ms=BASE_MS + i * 1000,
            headers=[("traceparent", b"00-x")],
        )
        for i in range(300)
    ]
    await asyncio.gather(*futures)
    await producer.stop()
    done = subprocess.run(
        [
            sys.executable,
            "scripts/replay.py",
            "--topology",
            str(topology),
            "--checkpoint",
            str(tmp_path / "ck.json"),
            "--topic",
            source,
            "--to",
            target,
            "--since",
            iso(BASE_MS + 100_000),
            "--until",
            iso(BASE_MS + 200_000),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert summary["acknowledged"] == 100 and summary["finished"]

    replayed = []
    async for rec in read_to_end(broker, target):
        headers = dict(rec.headers)
        assert headers["replay.from"].startswith(source.encode())
        assert headers["traceparent"] == b"00-x" and headers["origin"] == b"backfill"
        replayed.append(orjson.loads(rec.value)["n"])
    assert sorted(replayed) == list(range(100, 200))
