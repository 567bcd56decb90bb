"""scripts/replay.py on the real broker: a time range of a topic lands in the backfill
topic, exactly, even though the embedded broker answers offsets_for_times wrongly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from pipeline import kafka_clients
from pipeline.kafka_io import broker_at, ensure_topics, read_to_end
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration
BASE_MS = 1_764_000_000_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def test_replay_of_a_time_range(stack) -> None:
    source, target = f"src-{uuid.uuid4().hex[:8]}", f"bf-{uuid.uuid4().hex[:8]}"
    bootstrap = stack.broker.bootstrap
    broker = broker_at(bootstrap)
    await ensure_topics(broker, [source], 3)
    producer = kafka_clients.producer(broker, client_suffix="-test")
    await producer.start()
    futures = [
        await producer.send(
            source, orjson.dumps({"n": i}), key=str(i % 7).encode(), timestamp_ms=BASE_MS + i * 1000
        )
        for i in range(300)
    ]
    await asyncio.gather(*futures)
    await producer.stop()
    done = subprocess.run(
        [
            sys.executable,
            "scripts/replay.py",
            "--topic",
            source,
            "--to",
            target,
            "--since",
            iso(BASE_MS + 100_000),
            "--until",
            iso(BASE_MS + 200_000),
            "--bootstrap",
            bootstrap,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["replayed"] == 100

    replayed = []
    async for rec in read_to_end(broker, target):
        assert dict(rec.headers)["replay.from"].startswith(source.encode())
        replayed.append(orjson.loads(rec.value)["n"])
    assert sorted(replayed) == list(range(100, 200))
