"""A topic range as a replay source, against a stand-in consumer of one partition: records
the client cannot decode (issue 24 item 4) and timestamps out of order (item 6). The real
broker runs in tests/integration/test_replay.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from pipeline.cli import main
from pipeline.kafka_io import broker_at
from pipeline.replay import cli as replay_cli
from pipeline.replay.checkpoint import Checkpoint
from pipeline.replay.files import Row
from pipeline.replay.topic import TopicRange
from pipeline.topology.loader import load_topology


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class Partition:
    """Partition 0 of "src": a record per offset, stamped ``timestamps[offset]``. A fetch that
    reaches an offset in ``bad`` raises UnicodeDecodeError as aiokafka does (the records of
    that fetch before it are lost with the exception, the position is left at the bad one)."""

    def __init__(self, timestamps: list[int], bad: frozenset[int] = frozenset()) -> None:
        self.ts, self.bad = timestamps, bad
        self.pos = 0
        self.fetched: set[int] = set()  # offsets handed out

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: list[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.ts)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.ts) for tp in tps}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    async def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, None]:
        return {tp: None for tp in query}  # as unhelpful as the embedded broker: found by search

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int = 500) -> dict[Any, Any]:
        tp = tps[0]
        chunk = range(self.pos, min(self.pos + max_records, len(self.ts)))
        for offset in chunk:
            if offset in self.bad:
                self.pos = offset
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        if not chunk:
            return {}
        self.pos = chunk.stop
        self.fetched.update(chunk)
        return {tp: [record(offset, self.ts[offset]) for offset in chunk]}


def record(offset: int, ts: int) -> SimpleNamespace:
    return SimpleNamespace(
        topic="src",
        partition=0,
        offset=offset,
        timestamp=ts,
        key=b"k",
        value=b"v%d" % offset,
        headers=[("h", b"1")],
    )


def topic_range(partition: Partition, since: int | None, until: int | None, **kw: Any) -> TopicRange:
    source = TopicRange(
        broker_at("localhost:1"), "src", iso(since) if since else None, iso(until) if until else None, **kw
    )
    source._consumer = lambda: partition  # type: ignore[method-assign,assignment,return-value]
    return source


async def rows_of(source: TopicRange, start: int = 0) -> list[Row]:
    return [row async for row in source.rows(start)]


async def test_a_record_the_client_cannot_decode_is_a_row_to_reject_and_the_read_goes_on() -> None:
    partition = Partition([1_000 + i for i in range(8)], bad=frozenset({3}))
    source = topic_range(partition, None, None)
    got = await rows_of(source)
    assert [row.number for row in got] == list(range(8))  # nothing lost, the bad one in place
    bad = got[3]
    assert bad.value is None and bad.reject is not None and bad.reject[0] == "undecodable_record"
    assert "UnicodeDecodeError" in bad.reject[1] and dict(bad.headers)["replay.from"] == b"src:0:3"
    assert [row.value for row in got if row.number != 3] == [b"v%d" % i for i in (0, 1, 2, 4, 5, 6, 7)]
    assert await rows_of(source, start=3) == got[3:]  # a resume starting on it steps past it too


async def test_an_undecodable_record_in_the_search_for_the_start_is_stepped_over() -> None:
    partition = Partition([1_000 + i * 10 for i in range(20)], bad=frozenset({9, 10, 19}))
    source = topic_range(partition, 1_100, None, disorder_ms=0)
    # 9 and 10 have no time to give: the search takes 11's (1,110), and the span starts at 9
    assert await source.locate() == {0: (9, 20)}
    got = await rows_of(source)
    assert [(row.number, row.reject is not None) for row in got][:3] == [(0, True), (1, True), (2, False)]
    assert got[-1].reject is not None  # the last record, undecodable, ends the span


async def test_records_out_of_order_past_one_stamped_after_until_are_replayed() -> None:
    """Issue 24 item 6: the read stopped at the first record stamped at or after --until, so
    the in-range records after it (18 and 19 here) were skipped without a word."""
    timestamps = [5, 8, 12, 11, 15, 21, 18, 19, 25, 30, 24]
    source = topic_range(Partition(timestamps), 10, 20)
    got = await rows_of(source)
    sent = [row.number for row in got if row.value is not None]
    assert sent == [2, 3, 4, 6, 7]  # every record stamped in [10, 20), in offset order
    outside = [row.number for row in got if row.outside_time_range]
    assert outside == [0, 1, 5, 8, 9, 10]  # each judged by its own time, counted, not sent


@pytest.mark.parametrize("disorder_ms", [0, 3])
async def test_the_span_read_is_bounded_by_the_disorder_allowed(disorder_ms: int) -> None:
    """A long partition stamped in order (ts = offset): only the range and ``disorder_ms``
    on either side of it are read, not the whole partition."""
    partition = Partition(list(range(10_000)))
    source = topic_range(partition, 100, 200, disorder_ms=disorder_ms)
    assert await source.locate() == {0: (100 - disorder_ms, 200 + disorder_ms)}
    partition.fetched.clear()
    got = await rows_of(source)
    assert [row.number for row in got if row.value is not None] == list(range(disorder_ms, 100 + disorder_ms))
    assert max(partition.fetched) < 200 + disorder_ms + 1_000  # one fetch past the end at most
    assert sum(row.outside_time_range for row in got) == 2 * disorder_ms


def _resumed_checkpoint(path: Path, source: TopicRange, **fields: object) -> None:
    """A checkpoint of ``source`` halfway through (its span located, rows sent)."""
    checkpoint = Checkpoint(source.identity, "interactions.backfill", next_row=3)
    checkpoint.partition_marks = {0: 0}
    checkpoint.source_offsets = {0: [0, 8]}
    for name, value in fields.items():
        setattr(checkpoint, name, value)
    checkpoint.save(path)


def _replay_topic(source: TopicRange, path: Path, *extra: str) -> list[str]:
    topology = Path(__file__).resolve().parents[3] / "topologies" / "backfill.yaml"
    since, until = iso(source.since), iso(source.until)
    return [
        "replay", "--topology", str(topology), "--topic", "src", "--since", since, "--until", until,
        "--checkpoint", str(path), "--progress", "log", *extra,
    ]  # fmt: skip


async def test_a_fresh_topic_replay_records_the_disorder_window_it_located_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = Partition([1_000 + i for i in range(20)])
    source = topic_range(partition, 1_005, 1_010, disorder_ms=2)
    monkeypatch.setattr(replay_cli.kafka_clients, "consumer", lambda *a, **kw: partition)
    path = tmp_path / "ck.json"
    checkpoint = Checkpoint(source.identity, "interactions.backfill")
    topology = load_topology(Path(__file__).resolve().parents[3] / "topologies" / "backfill.yaml")
    assert await replay_cli._prepare(topology, source, "interactions.backfill", checkpoint, path) == set()
    saved = Checkpoint.load(path)
    assert saved.source_offsets == {0: [3, 12]} and saved.disorder_ms == 2


@pytest.mark.parametrize(("recorded", "given"), [(60_000, 0), (0, 60_000)])
def test_a_resume_with_another_disorder_window_is_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    recorded: int | None,
    given: int,
) -> None:
    """Issue 24 review, item 4: the span's ends come from --disorder-ms, and its rows are
    numbered by them, yet a resume with another value silently kept the old ends. Now it is
    refused before anything is read: pass the same --disorder-ms, or --restart."""
    monkeypatch.setenv("PIPELINE_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    source = topic_range(Partition([]), 1_000_000, 2_000_000, disorder_ms=given)
    path = tmp_path / "ck.json"
    _resumed_checkpoint(path, source, disorder_ms=recorded)
    assert main(_replay_topic(source, path, "--disorder-ms", str(given))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{path}: disorder_ms: ") and "--restart" in err, err
    assert f"--disorder-ms {recorded} to resume" in err, err


def test_a_resume_with_the_same_disorder_window_goes_on(tmp_path: Path) -> None:
    source = topic_range(Partition([]), 1_000_000, 2_000_000, disorder_ms=7)
    path = tmp_path / "ck.json"
    _resumed_checkpoint(path, source, disorder_ms=7)
    replay_cli.same_disorder(Checkpoint.load(path), source, path)  # no error
    fresh = Checkpoint(source.identity, "interactions.backfill")  # not located yet: nothing to compare
    replay_cli.same_disorder(fresh, topic_range(Partition([]), 1, 2, disorder_ms=9), path)


def test_a_checkpoint_of_the_release_before_resumes_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It recorded no --disorder-ms: its end is the partition's end (read further, each record
    judged by its own time) and its start is passed already, so a resume is safe; a
    --restart would send every acknowledged row again."""
    source = topic_range(Partition([]), 1_000_000, 2_000_000, disorder_ms=60_000)
    path = tmp_path / "ck.json"
    _resumed_checkpoint(path, source, disorder_ms=None)
    replay_cli.same_disorder(Checkpoint.load(path), source, path)  # no error
    assert "did not record --disorder-ms" in caplog.text
