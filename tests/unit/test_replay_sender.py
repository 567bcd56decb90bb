"""The replay's checkpoint and its acknowledged prefix: what a resumed run may skip. The
producer is a stand-in here (acknowledgements out of order, a refusal): the real broker
runs in tests/integration/test_replay_tool.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata

from pipeline.replay.checkpoint import Checkpoint, CheckpointMismatch, resume_or_start
from pipeline.replay.files import Row
from pipeline.replay.progress import Counts, Progress
from pipeline.replay.sender import ReplayFailed, Sender


class Producer:
    """Holds each send's future; the test acknowledges or fails them in any order."""

    def __init__(self, refuse_row: int | None = None) -> None:
        self.futures: list[asyncio.Future[RecordMetadata]] = []
        self.headers: list[dict[str, bytes]] = []
        self.refuse_row = refuse_row

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]):
        if self.refuse_row is not None and dict(headers)["replay.row"] == str(self.refuse_row).encode():
            raise MessageSizeTooLargeError("too large")
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        self.headers.append(dict(headers))
        return future

    def ack(self, index: int, partition: int, offset: int) -> None:
        meta = RecordMetadata("t", partition, None, offset, 0, -1, 0)  # type: ignore[arg-type]
        self.futures[index].set_result(meta)


async def rows(n: int, skip: frozenset[int] = frozenset(), delay: float = 0.0) -> AsyncIterator[Row]:
    for number in range(n):
        yield Row(number, None if number in skip else b"{}", b"k", (("origin", b"live"), ("x", b"1")))
        await asyncio.sleep(delay)


def sender(producer: Producer, tmp_path: Path, **kw: object) -> Sender:
    checkpoint = Checkpoint("file:x", "dest", partition_marks={0: 100, 1: 200})
    return Sender(producer, "dest", checkpoint, tmp_path / "ck.json", Progress(None, bar=False), **kw)  # type: ignore[arg-type]


async def test_the_prefix_stops_at_the_oldest_unacknowledged_send(tmp_path: Path) -> None:
    producer = Producer()
    s = sender(producer, tmp_path)
    run = asyncio.create_task(s.run(rows(5, skip=frozenset({3})), asyncio.Event()))
    while len(producer.futures) < 4:
        await asyncio.sleep(0.01)
    producer.ack(1, 1, 200)  # row 1 before row 0
    producer.ack(2, 0, 100)
    await asyncio.sleep(0.05)
    s._advance()
    assert s.checkpoint.next_row == 0  # row 0 still open: nothing past it counts
    producer.ack(0, 0, 101)  # rows 0-2 done, 3 skipped by the mapping, 4 open
    await asyncio.sleep(0.05)
    s._advance()
    assert s.checkpoint.next_row == 4 and s.checkpoint.partition_marks == {0: 102, 1: 201}
    producer.ack(3, 1, 201)
    assert await asyncio.wait_for(run, 5) is True
    saved = Checkpoint.load(tmp_path / "ck.json")
    assert (saved.next_row, saved.acknowledged, saved.skipped, saved.finished) == (5, 4, 1, True)
    assert saved.partition_marks == {0: 102, 1: 202}
    # the replay's own headers replace any the row carried; others are kept
    assert producer.headers[0]["origin"] == b"backfill" and producer.headers[0]["x"] == b"1"
    assert producer.headers[0]["replay.run"] == saved.run_id.encode()


async def test_rows_found_in_the_topic_are_not_sent_again(tmp_path: Path) -> None:
    producer = Producer()
    s = sender(producer, tmp_path, already_sent={1, 2})
    run = asyncio.create_task(s.run(rows(4), asyncio.Event()))
    while len(producer.futures) < 2:
        await asyncio.sleep(0.01)
    for i, future in enumerate(producer.futures):
        future.set_result(RecordMetadata("t", 0, None, i, 0, -1, 0))  # type: ignore[arg-type]
    assert await asyncio.wait_for(run, 5)
    assert [h["replay.row"] for h in producer.headers] == [b"0", b"3"]
    assert s.counts.already_sent == 2 and s.checkpoint.next_row == 4


async def test_a_failed_send_stops_at_the_checkpoint_before_it(tmp_path: Path) -> None:
    producer = Producer()
    s = sender(producer, tmp_path)
    run = asyncio.create_task(s.run(rows(3), asyncio.Event()))
    while len(producer.futures) < 3:
        await asyncio.sleep(0.01)
    producer.ack(0, 0, 100)
    producer.futures[1].set_exception(KafkaTimeoutError())
    producer.ack(2, 0, 101)
    with pytest.raises(ReplayFailed, match="row 1"):
        await asyncio.wait_for(run, 5)
    saved = Checkpoint.load(tmp_path / "ck.json")
    assert saved.next_row == 1 and not saved.finished  # row 1 is sent again by the next run


async def test_a_row_the_producer_refuses_stops_with_its_number(tmp_path: Path) -> None:
    producer = Producer(refuse_row=2)
    s = sender(producer, tmp_path)
    run = asyncio.create_task(s.run(rows(4), asyncio.Event()))
    while len(producer.futures) < 2:
        await asyncio.sleep(0.01)
    for i, future in enumerate(producer.futures):  # rows 0 and 1 are acknowledged after the refusal
        future.set_result(RecordMetadata("t", 0, None, i, 0, -1, 0))  # type: ignore[arg-type]
    with pytest.raises(ReplayFailed, match="row 2: cannot be sent"):
        await asyncio.wait_for(run, 5)
    assert Checkpoint.load(tmp_path / "ck.json").next_row == 2


async def test_stop_waits_for_the_sends_in_flight(tmp_path: Path) -> None:
    producer = Producer()
    s = sender(producer, tmp_path)
    stop = asyncio.Event()
    run = asyncio.create_task(s.run(rows(1_000, delay=0.002), stop))
    while len(producer.futures) < 3:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.sleep(0.05)
    for i, future in enumerate(producer.futures):
        future.set_result(RecordMetadata("t", 0, None, i, 0, -1, 0))  # type: ignore[arg-type]
    assert await asyncio.wait_for(run, 5) is False
    saved = Checkpoint.load(tmp_path / "ck.json")
    assert saved.next_row == len(producer.futures) < 1_000 and not saved.finished


def test_pacing(tmp_path: Path) -> None:
    async def main() -> float:
        producer = Producer()
        s = sender(producer, tmp_path, rate=200.0)

        async def ack_all() -> None:
            while True:
                for i, f in enumerate(producer.futures):
                    if not f.done():
                        f.set_result(RecordMetadata("t", 0, None, i, 0, -1, 0))  # type: ignore[arg-type]
                await asyncio.sleep(0.01)

        acker = asyncio.create_task(ack_all())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await s.run(rows(100), asyncio.Event())
        acker.cancel()
        return loop.time() - t0

    assert asyncio.run(main()) >= 0.45  # 100 rows at 200/s


def test_a_checkpoint_of_another_replay_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ck.json"
    Checkpoint("file:a", "dest", next_row=7, partition_marks={3: 9}).save(path)
    resumed = resume_or_start(path, "file:a", "dest")
    assert (resumed.next_row, resumed.partition_marks) == (7, {3: 9})
    with pytest.raises(CheckpointMismatch, match="file:a"):
        resume_or_start(path, "file:b", "dest")
    assert not path.with_name("ck.json.tmp").exists()


def test_the_progress_line() -> None:
    progress = Progress(1_000, bar=False)
    line = progress.line(Counts(read=250, sent=240, acknowledged=200, skipped=10), 250)
    assert "250/1,000 rows (25 %)" in line and "acknowledged 200" in line and "ETA" in line
