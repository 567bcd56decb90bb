"""The replay's checkpoint and its acknowledged prefix: what a resumed run may skip. The
producer is a stand-in here (acknowledgements out of order, a refusal): the real broker
runs in tests/integration/test_replay_tool.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata

from pipeline.replay.checkpoint import Checkpoint, CheckpointMismatch, resume_or_start
from pipeline.replay.cli import _checkpoint_path
from pipeline.replay.files import Row
from pipeline.replay.progress import Counts, Progress
from pipeline.replay.rejects import RejectFile, rejects_path
from pipeline.replay.sender import ReplayFailed, Sender, destination_ends
from pipeline.replay.topic import first_offset_at


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


async def test_a_row_the_producer_refuses_goes_to_the_reject_file_and_the_replay_goes_on(
    tmp_path: Path,
) -> None:
    """Issue 24 item 5: a row too large for the producer stopped the replay for good (every
    resume stopped on it again). It is set aside with its number and reason, counted, and the
    acknowledged prefix passes it: a resume starts after it."""
    producer = Producer(refuse_row=2)
    rejects = RejectFile(rejects_path(tmp_path / "ck.json"), "run-1")
    s = sender(producer, tmp_path, rejects=rejects)
    run = asyncio.create_task(s.run(rows(5), asyncio.Event()))
    while len(producer.futures) < 4:  # rows 0, 1, 3 and 4: the refusal does not stop the loop
        await asyncio.sleep(0.01)
    for i, future in enumerate(producer.futures):
        future.set_result(RecordMetadata("t", 0, None, i, 0, -1, 0))  # type: ignore[arg-type]
    assert await asyncio.wait_for(run, 5) is True
    rejects.close()
    assert [h["replay.row"] for h in producer.headers] == [b"0", b"1", b"3", b"4"]
    assert (s.counts.sent, s.counts.acknowledged, s.counts.rejected) == (4, 4, 1)
    saved = Checkpoint.load(tmp_path / "ck.json")
    assert (saved.next_row, saved.acknowledged, saved.rejected, saved.finished) == (5, 4, 1, True)
    (line,) = (tmp_path / "ck.rejects.jsonl").read_bytes().splitlines()
    doc = orjson.loads(line)
    assert (doc["run"], doc["row"], doc["reason"], doc["value"]) == ("run-1", 2, "record_too_large", "{}")
    assert "MessageSizeTooLargeError" in doc["error"]


def test_a_resumed_run_does_not_write_a_rejected_row_twice(tmp_path: Path) -> None:
    """An interrupted attempt rejected row 7 past its checkpoint (next_row 5): the resume reads
    row 7 again and rejects it again, without a second line. Another run's lines are kept."""
    path = tmp_path / "ck.rejects.jsonl"
    first = RejectFile(path, "run-1")
    first.add(3, "record_too_large", "big", b"x")
    first.add(7, "record_too_large", "big", b"x")
    first.close()
    path.write_bytes(path.read_bytes() + b'{"run": "run-1", "row": 9')  # a line cut short by a kill
    resumed = RejectFile(path, "run-1", next_row=5)
    resumed.add(7, "record_too_large", "big", b"x")
    resumed.add(8, "undecodable_record", "UnicodeDecodeError", None, None, (("replay.from", b"t:0:8"),))
    resumed.close()
    docs = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]
    assert [d["row"] for d in docs] == [3, 7, 8]
    assert docs[-1]["source"] == "t:0:8" and "value" not in docs[-1]


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


async def test_marks_stay_before_rows_an_earlier_attempt_sent_until_the_prefix_passes_them(
    tmp_path: Path,
) -> None:
    """A resumed run found row 2 in the topic (partition 0, offset 100, at the mark). Its own
    sends land after it; if an acknowledgement of row 0 moved the mark past offset 100 and the
    run were killed before the prefix reached row 2, the next resume would not find row 2 and
    would send it a second time."""
    producer = Producer()
    s = sender(producer, tmp_path, already_sent={2})
    run = asyncio.create_task(s.run(rows(5), asyncio.Event()))
    while len(producer.futures) < 4:  # rows 0, 1, 3, 4 (row 2 is already in the topic)
        await asyncio.sleep(0.01)
    producer.ack(0, 0, 105)  # row 0: after the earlier attempt's row 2 (offset 100)
    producer.ack(1, 1, 300)  # row 1
    await asyncio.sleep(0.05)
    s._advance()
    assert s.checkpoint.next_row == 3  # rows 0-2 done (2 found in the topic)
    assert s.checkpoint.partition_marks == {0: 100, 1: 200}  # a resume still finds row 2
    producer.ack(2, 0, 106)  # row 3: past every row of the earlier attempt
    producer.ack(3, 1, 301)
    assert await asyncio.wait_for(run, 5) is True
    assert Checkpoint.load(tmp_path / "ck.json").partition_marks == {0: 107, 1: 302}


class Destination:
    """A consumer of a destination whose ListOffsets answers are off (too high: a resume
    scanning from there would miss rows before them); its fetches report the true end."""

    def __init__(self, true_ends: dict[int, int], listed: dict[int, int]) -> None:
        self.true_ends, self.listed = true_ends, listed
        self.positions: dict[int, int] = {}
        self.fetched: set[int] = set()

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.true_ends)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.listed[tp.partition] for tp in tps}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.fetched.clear()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.fetched.update(tp.partition for tp in tps)
        return {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.true_ends[tp.partition] if tp.partition in self.fetched else None


async def test_a_fresh_run_marks_the_ends_fetches_report_not_listoffsets() -> None:
    consumer = Destination(true_ends={0: 500, 1: 0}, listed={0: 540, 1: 3})
    assert await destination_ends(consumer, "dest") == {0: 500, 1: 0}  # type: ignore[arg-type]
    assert consumer.positions == {0: 539, 1: 2}  # fetched near the end, not read from offset 0


def test_a_changed_file_finds_its_checkpoint_and_is_refused(tmp_path: Path) -> None:
    """The default checkpoint's name leaves the file's version out: a file touched or rewritten
    between runs is refused (exit 2) instead of being replayed again from row 0."""
    before = _checkpoint_path(None, f"file:{tmp_path}/history.csv:1000:1700000000", "bf")
    after = _checkpoint_path(None, f"file:{tmp_path}/history.csv:1200:1700000100", "bf")
    assert before == after and before.name.startswith("history.csv-bf-")
    assert _checkpoint_path(None, f"file:{tmp_path}/other.csv:1000:1700000000", "bf") != before
    path = tmp_path / before.name
    Checkpoint(f"file:{tmp_path}/history.csv:1000:1700000000", "bf", next_row=5).save(path)
    with pytest.raises(CheckpointMismatch):
        resume_or_start(path, f"file:{tmp_path}/history.csv:1200:1700000100", "bf")


def test_a_file_that_is_not_a_checkpoint_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"  # --checkpoint given the wrong file
    path.write_text("user: userId\n")
    with pytest.raises(CheckpointMismatch, match=r"mapping\.yaml: not a replay checkpoint"):
        resume_or_start(path, "file:x", "dest")


class TransactionalPartition:
    """Records at offsets 0-8 (timestamp = offset), a transaction marker at 9, end 10."""

    def __init__(self) -> None:
        self.pos = 0

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    async def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, None]:
        return {tp: None for tp in query}  # no record at or after the time

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def getmany(self, tp: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if self.pos >= 9:
            self.pos = 10  # the marker is skipped: nothing to hand on
            return {}
        return {tp: [SimpleNamespace(offset=self.pos, timestamp=self.pos)]}

    async def position(self, tp: TopicPartition) -> int:
        return self.pos


async def test_a_range_starting_after_the_last_record_of_a_transactional_partition_is_empty() -> None:
    """The binary search may land on the commit marker that ends a transactional partition:
    no record there is the end, not a timeout."""
    tp = TopicPartition("src", 0)
    # the marker's offset: reading the range from there finds no record before the end
    assert await first_offset_at(TransactionalPartition(), tp, 100, 10) == 9  # type: ignore[arg-type]
    assert await first_offset_at(TransactionalPartition(), tp, 5, 10) == 5  # type: ignore[arg-type]
