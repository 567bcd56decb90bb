"""`pipeline audit` on the real broker: a time range keeps what is older out of the books
(an old, never-answered input is not "lost" in last hour's audit), and its errors are
clear."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import yaml

from pipeline import kafka_clients
from tests.integration.harness import create_topics, fresh_topology, run_pipeline_command

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


async def _write(topology, now_ms: int) -> None:
    """Two hours ago: 3 inputs, one never answered. Now: 4 inputs, all answered (one by a
    dead letter)."""
    producer = kafka_clients.producer(topology.broker, client_suffix="-test", linger_ms=5)
    await producer.start()
    try:
        source = topology.source.topics[0]
        coords = []
        for i, ts in enumerate([now_ms - 2 * HOUR_MS] * 3 + [now_ms - 1_000] * 4):
            value = orjson.dumps({"event_id": f"e{i}", "user_id": 7})
            meta = await (await producer.send(source, value, partition=0, timestamp_ms=ts))
            coords.append((meta.topic, meta.partition, meta.offset, ts))
        for topic, partition, offset, ts in coords[:2] + coords[3:6]:
            doc = {"user_id": 7, "sources": [{"topic": topic, "partition": partition, "offset": offset}]}
            await producer.send_and_wait(topology.sink.topic, orjson.dumps(doc), timestamp_ms=ts + 50)
        topic, partition, offset, ts = coords[6]
        headers = [
            ("dlq.source_topic", topic.encode()),
            ("dlq.source_partition", str(partition).encode()),
            ("dlq.source_offset", str(offset).encode()),
            ("dlq.reason", b"malformed_json"),
        ]
        await producer.send_and_wait(
            topology.sink.dead_letter_topic, b"x", headers=headers, timestamp_ms=ts + 50
        )
    finally:
        await producer.stop()


def _audit(path: Path, *args: str) -> tuple[int, dict[str, object] | str]:
    proc = run_pipeline_command("audit", path, *args, timeout_s=120)
    if proc.returncode == 2:
        return 2, proc.stderr
    return proc.returncode, orjson.loads(proc.stdout.splitlines()[-1])


async def test_audit_of_a_time_range(stack, tmp_path: Path) -> None:
    topology = fresh_topology(stack)
    await create_topics(topology)
    now_ms = time.time_ns() // 1_000_000
    await _write(topology, now_ms)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json")))

    code, whole = _audit(path)
    assert code == 1 and isinstance(whole, dict)
    assert whole["events_in"] == 7 and whole["lost"] == 1, whole

    code, last_hour = _audit(path, "--since", "1h")
    assert code == 0 and isinstance(last_hour, dict)
    assert last_hour["events_in"] == 4 and last_hour["lost"] == 0, last_hour
    assert last_hour["dead_letter_reasons"] == {"malformed_json": 1}

    older = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms - HOUR_MS) / 1000))
    code, before = _audit(path, "--until", older)
    assert code == 1 and isinstance(before, dict)
    assert before["events_in"] == 3 and before["lost"] == 1, before

    code, err = _audit(path, "--since", "yesterday")
    assert code == 2 and "ISO 8601" in str(err)
