"""`pipeline audit` on the real broker: a time range keeps what is older out of the books
(an old, never-answered input is not "lost" in last hour's audit), an input not answered yet
is in flight, not lost, and its errors are clear."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka import TopicPartition

from pipeline import kafka_clients
from pipeline.audit import audit_topology
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


async def _commit(topology, partition: int, offset: int) -> None:
    """The pipeline's group commits ``offset`` (as it does once all before it is answered)."""
    consumer = kafka_clients.consumer(
        topology.broker, client_suffix="-test", group_id=topology.source.group_id
    )
    await consumer.start()
    try:
        tp = TopicPartition(topology.source.topics[0], partition)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def test_audit_tells_in_flight_from_lost(stack, tmp_path: Path) -> None:
    """No pipeline answers: two inputs of now are in flight (exit 0), one of five minutes ago
    is lost (past the bound). Once the group has committed past an input of now, that one is
    lost too, young as it is; --in-flight-ms 0 counts every unanswered input as lost."""
    topology = fresh_topology(stack)
    await create_topics(topology)
    now_ms = time.time_ns() // 1_000_000
    producer = kafka_clients.producer(topology.broker, client_suffix="-test", linger_ms=5)
    await producer.start()
    try:
        for partition, ts in [(0, now_ms), (0, now_ms), (1, now_ms - 300_000)]:
            value = orjson.dumps({"event_id": f"e{ts}", "user_id": 7})
            await producer.send_and_wait(
                topology.source.topics[0], value, partition=partition, timestamp_ms=ts
            )
    finally:
        await producer.stop()
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json")))

    code, recent = _audit(path, "--since", "1m")  # the deadline (30 s) bounds in flight
    assert code == 0 and isinstance(recent, dict)
    assert recent["in_flight"] == 2 and recent["lost"] == 0, recent

    whole = await audit_topology(topology, in_flight_ms=30_000)
    assert whole["in_flight"] == 2 and whole["lost"] == 1, whole

    await _commit(topology, 0, 1)
    committed = await audit_topology(topology, in_flight_ms=30_000)
    assert committed["in_flight"] == 1 and committed["lost"] == 2, committed
    assert committed["lost_examples"] == [
        f"{topology.source.topics[0]}[0]@0",
        f"{topology.source.topics[0]}[1]@0",
    ]

    code, strict = _audit(path, "--in-flight-ms", "0")
    assert code == 1 and isinstance(strict, dict)
    assert strict["lost"] == 3 and strict["in_flight"] == 0, strict
