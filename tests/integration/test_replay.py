"""`pipeline replay --topic` on the real broker: a time range of a
topic lands in the backfill topic, exactly, even though the embedded broker answers
offsets_for_times wrongly; the source records' headers are kept and the replay's added."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml

from pipeline import kafka_clients
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import broker_at, ensure_topics, read_to_end
from pipeline.topology.schema import Broker
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration
BASE_MS = 1_764_000_000_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@dataclass(frozen=True)
class Backfill:
    """A replay's ends on the stack: topologies/backfill.yaml pointed at the stack's broker,
    a fresh source topic and a fresh backfill topic to replay it to."""

    topology: Path
    source: str
    target: str
    broker: Broker

    async def create_source(self, partitions: int) -> None:
        await ensure_topics(self.broker, [self.source], partitions)


@pytest.fixture
def backfill(stack, tmp_path: Path) -> Backfill:
    topology = tmp_path / "backfill.yaml"
    topology.write_text(yaml.safe_dump(topology_on_stack(stack, base=ROOT / "topologies" / "backfill.yaml")))
    return Backfill(
        topology,
        source=f"src-{uuid.uuid4().hex[:8]}",
        target=f"bf-{uuid.uuid4().hex[:8]}",
        broker=broker_at(stack.broker.bootstrap),
    )


async def test_replay_of_a_time_range(backfill: Backfill, tmp_path: Path) -> None:
    source, target, broker = backfill.source, backfill.target, backfill.broker
    await backfill.create_source(3)
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
            "-m",
            "pipeline",
            "replay",
            "--topology",
            str(backfill.topology),
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


async def test_a_topic_range_resumed_after_the_source_grew_sends_each_record_once(
    backfill: Backfill, tmp_path: Path
) -> None:
    """No --until: the range ends where the source ended when the replay started. Records that
    arrive in the source before the resume neither join the range nor renumber its rows (a
    partition's growth used to shift the next partitions' row numbers: rows sent twice)."""
    import signal
    import time
    from collections import Counter

    source, target, broker = backfill.source, backfill.target, backfill.broker
    await backfill.create_source(3)
    producer = kafka_clients.producer(broker, client_suffix="-test")
    await producer.start()

    async def produce(first: int, count: int, partition: int | None = None) -> None:
        futures = [
            await producer.send(
                source,
                orjson.dumps({"n": i}),
                key=str(i).encode(),
                partition=i % 3 if partition is None else partition,
                timestamp_ms=BASE_MS + i * 1000,
            )
            for i in range(first, first + count)
        ]
        await asyncio.gather(*futures)

    await produce(0, 600)  # 200 per partition
    checkpoint = tmp_path / "ck.json"
    args = [sys.executable, "-m", "pipeline", "replay", "--topology", str(backfill.topology)]
    args += ["--progress", "log", "--checkpoint", str(checkpoint)]
    args += ["--topic", source, "--to", target, "--since", iso(BASE_MS)]
    first = subprocess.Popen(
        [*args, "--rate", "100"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # into the second partition
        assert first.poll() is None
        try:
            if orjson.loads(checkpoint.read_bytes())["next_row"] > 250:
                break
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    await produce(600, 100, partition=0)  # the first partition grows meanwhile
    await producer.stop()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["finished"]

    replayed = Counter()
    async for rec in read_to_end(broker, target):
        replayed[orjson.loads(rec.value)["n"]] += 1
    assert set(replayed) == set(range(600)) and max(replayed.values()) == 1


def replay_topic(backfill: Backfill, tmp_path: Path, *args: str) -> dict:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pipeline", "replay", "--topology", str(backfill.topology)),
            *("--progress", "log", "--checkpoint", str(tmp_path / "ck.json")),
            *("--topic", backfill.source, "--to", backfill.target, *args),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1])


async def test_a_record_the_client_cannot_decode_is_rejected_and_the_replay_goes_on(
    stack, backfill: Backfill, tmp_path: Path
) -> None:
    """Issue 24 item 4: a source record with a header key that is not UTF-8 stopped a topic
    replay with a UnicodeDecodeError traceback, and every resume on the same record. It is
    stepped past (as the pipeline's source does), written to the reject file with its
    coordinates, counted, and the records after it are replayed."""
    from pipeline.devstack.poison_producer import produce_undecodable

    source, target, broker = backfill.source, backfill.target, backfill.broker
    await backfill.create_source(1)
    producer = kafka_clients.producer(broker, client_suffix="-test")
    await producer.start()
    for i in range(5):
        await producer.send_and_wait(source, orjson.dumps({"n": i}), partition=0)
    (bad,) = await asyncio.to_thread(produce_undecodable, stack.broker.bootstrap, source, 0, 1)
    for i in range(5, 10):
        await producer.send_and_wait(source, orjson.dumps({"n": i}), partition=0)
    await producer.stop()

    summary = replay_topic(backfill, tmp_path)
    assert summary["finished"] and (summary["acknowledged"], summary["rejected"]) == (10, 1), summary
    (line,) = (tmp_path / "ck.rejects.jsonl").read_bytes().splitlines()
    rejected = orjson.loads(line)
    assert rejected["reason"] == "undecodable_record" and rejected["source"] == f"{source}:0:{bad}"
    assert sorted([orjson.loads(rec.value)["n"] async for rec in read_to_end(broker, target)]) == list(
        range(10)
    )


async def test_records_stamped_out_of_order_are_each_judged_by_their_own_time(
    backfill: Backfill, tmp_path: Path
) -> None:
    """Issue 24 item 6: the read of a partition stopped at the first record stamped at or after
    --until, so in-range records after it were skipped without a word. Record 12 here is
    stamped past --until, record 22 inside the range: every record stamped in [since, until)
    is replayed, the others counted as outside the range."""
    source, target, broker = backfill.source, backfill.target, backfill.broker
    await backfill.create_source(1)
    stamps = {i: BASE_MS + i * 1000 for i in range(30)} | {12: BASE_MS + 25_000, 22: BASE_MS + 19_500}
    producer = kafka_clients.producer(broker, client_suffix="-test")
    await producer.start()
    for i, ts in stamps.items():
        await producer.send_and_wait(source, orjson.dumps({"n": i}), partition=0, timestamp_ms=ts)
    await producer.stop()

    since, until = iso(BASE_MS + 5_000), iso(BASE_MS + 20_000)
    summary = replay_topic(backfill, tmp_path, "--since", since, "--until", until)
    expected = sorted(i for i, ts in stamps.items() if BASE_MS + 5_000 <= ts < BASE_MS + 20_000)
    assert 22 in expected and 12 not in expected
    replayed = sorted([orjson.loads(rec.value)["n"] async for rec in read_to_end(broker, target)])
    assert replayed == expected
    assert summary["finished"] and summary["acknowledged"] == len(expected)
    assert summary["outside_time_range"] == 30 - len(expected)  # disorder_ms (60 s) spans them all
