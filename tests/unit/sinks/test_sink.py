"""The sink's handling of refusals, against a fake producer (a broker cannot be made to
refuse a given record on demand; the real broker is used in the fault suite)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

from pipeline.events import OutputRecord, SinkBatch
from pipeline.sinks import kafka as sink_module
from pipeline.sinks.kafka import KafkaSink
from pipeline.sinks.rounds import SendRounds
from pipeline.testing.builders import raw_record
from pipeline.topology.schema import Broker, Sink


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: None, headers: list) -> object:
        self.records.append((key, value))
        return object()


class FakeProducer:
    """Refuses per a rule (a batch: as its first refused record is); counts every send, of
    a record or of a batch, and keeps what each partition was sent, in order."""

    def __init__(self, refuse, partitions: int = 1) -> None:
        self.refuse = refuse
        self.partitions = partitions
        self.sent: list[tuple[str, bytes]] = []
        self.by_partition: dict[int, list[bytes]] = {}
        self.attempts = 0
        self.unknown_topics: set[str] = set()

    def _done(self, error: Exception | None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
        return fut

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers=None, partition=None):
        self.attempts += 1
        error = self.refuse(topic, value, self.attempts)
        if error is not None:
            raise error
        self.sent.append((topic, value))
        return self._done(None)

    async def partitions_for(self, topic: str) -> set[int]:
        if topic in self.unknown_topics:
            raise TopicAuthorizationFailedError()
        return set(range(self.partitions))

    @property
    def client(self) -> SimpleNamespace:  # aiokafka's metadata: every partition has a leader
        every = list(range(self.partitions))
        return SimpleNamespace(cluster=SimpleNamespace(available_partitions_for_topic=lambda topic: every))

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int):
        self.attempts += 1
        errors = [e for _, v in batch.records if (e := self.refuse(topic, v, self.attempts)) is not None]
        if not errors:
            self.sent.extend((topic, v) for _, v in batch.records)
            self.by_partition.setdefault(partition, []).extend(v for _, v in batch.records)
        return self._done(errors[0] if errors else None)


def sink_with(producer: FakeProducer) -> KafkaSink:
    """Call inside a running loop (the real producers it replaces want one)."""
    sink = KafkaSink(Sink(topic="out", dead_letter_topic="dlq"), Broker(), max_backoff_s=0.01)
    sink.producers = {"": producer}  # type: ignore[dict-item]
    return sink


SOURCES = tuple(raw_record(i, key=b"k", value=b'{"n": %d}' % i) for i in range(3))


def batch(*records: OutputRecord) -> SinkBatch:
    return SinkBatch(records)


async def test_a_permanently_refused_output_becomes_dead_letters_of_its_inputs() -> None:
    huge = OutputRecord("out", b"u", b"x" * 2_000_000, (), SOURCES)
    producer = FakeProducer(
        lambda topic, value, n: MessageSizeTooLargeError() if len(value) > 1_000_000 else None
    )
    written = await sink_with(producer).write(batch(huge))
    assert [r.topic for r in written] == ["dlq"] * 3
    assert [r.value for r in written] == [s.value for s in SOURCES]  # re-drivable
    headers = dict(written[0].headers)
    assert headers["dlq.reason"] == b"output_refused"
    assert headers["dlq.source_offset"] == b"0"
    assert b"2000000-byte" in headers["dlq.detail"]
    assert producer.attempts == 2  # one refusal, then its three dead letters in one batch; no retry


async def test_a_retriable_refusal_is_sent_again_until_it_goes_through() -> None:
    rec = OutputRecord("out", b"u", b"{}", (), SOURCES)
    producer = FakeProducer(lambda topic, value, n: KafkaTimeoutError() if n < 3 else None)
    written = await sink_with(producer).write(batch(rec))
    assert written == [rec] and producer.attempts == 3


async def test_a_refused_dead_letter_is_retried_slowly_and_makes_the_sink_not_ready(monkeypatch) -> None:
    monkeypatch.setattr(sink_module, "REFUSED_RETRY_S", 0.05)
    dead = OutputRecord("dlq", b"u", b"{}", (("dlq.reason", b"x"),), SOURCES[:1])
    producer = FakeProducer(lambda topic, value, n: TopicAuthorizationFailedError() if n < 3 else None)
    sink = sink_with(producer)
    seen: list[bool] = []
    task = asyncio.create_task(sink.write(batch(dead)))
    while not task.done():
        seen.append(sink.refusing)
        await asyncio.sleep(0.01)
    written = await task
    assert True in seen and not sink.refusing  # not ready only while it was refused
    assert written == [dead] and producer.attempts == 3


async def test_a_batch_refused_for_good_is_sent_again_record_by_record_so_only_the_culprit_is_refused() -> (
    None
):
    good = [OutputRecord("out", b"u", b'{"ok": %d}' % i, (), SOURCES[i : i + 1]) for i in range(2)]
    bad = OutputRecord("out", b"u", b"bad", (), SOURCES[2:])
    producer = FakeProducer(lambda topic, value, n: MessageSizeTooLargeError() if value == b"bad" else None)
    written = await sink_with(producer).write(batch(good[0], bad, good[1]))
    assert written[:2] == good  # the batch failed as a whole; each good record went on its own
    [dead] = written[2:]
    assert dict(dead.headers)["dlq.reason"] == b"output_refused" and dead.value == SOURCES[2].value
    assert producer.attempts == 1 + 3 + 1  # the batch, each record, the dead letter


async def test_records_go_in_one_batch_per_partition_the_default_partitioner_picks_in_order() -> None:
    records = [
        OutputRecord("out", str(user).encode(), b"%d" % i, ()) for i, user in enumerate([5, 9, 5, 12, 9, 5])
    ]
    producer = FakeProducer(lambda topic, value, n: None, partitions=4)
    written = await sink_with(producer).write(batch(*records))
    assert written == records
    expected: dict[int, list[bytes]] = {}
    for rec in records:
        expected.setdefault(DefaultPartitioner()(rec.key, [0, 1, 2, 3], [0, 1, 2, 3]), []).append(rec.value)
    assert producer.by_partition == expected
    assert producer.attempts == len(expected)  # a send per partition, not per record


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), TopicAuthorizationFailedError()])
def test_permanent_refusals(error: Exception) -> None:
    assert sink_module.permanent(error)
    assert not sink_module.permanent(KafkaTimeoutError())


async def test_concurrent_writes_go_out_together_in_rounds() -> None:
    """Ten writes at once on one partition go out in one or two rounds (the first round
    may leave before the others are handed in), not one a write."""
    producer = FakeProducer(lambda topic, value, n: None)
    sink = sink_with(producer)
    records = [OutputRecord("out", b"u", b"%d" % i, ()) for i in range(10)]
    written = await asyncio.gather(*(sink.write(batch(rec)) for rec in records))
    assert written == [[rec] for rec in records]
    assert producer.attempts <= 2
    assert producer.by_partition == {0: [rec.value for rec in records]}  # in order


async def test_each_write_of_a_round_learns_only_its_own_refusals() -> None:
    producer = FakeProducer(lambda topic, value, n: MessageSizeTooLargeError() if value == b"bad" else None)
    sink = sink_with(producer)
    fine = OutputRecord("out", b"u", b"fine", (), SOURCES[:1])
    bad = OutputRecord("out", b"u", b"bad", (), SOURCES[1:2])
    first, second = await asyncio.gather(sink.write(batch(fine)), sink.write(batch(bad)))
    assert first == [fine]
    [dead] = second
    assert dict(dead.headers)["dlq.reason"] == b"output_refused"


async def test_a_failed_round_fails_its_writes_and_the_next_round_goes_on() -> None:
    rounds = SendRounds(lambda records: _explode_once(records))
    a = asyncio.create_task(rounds.send([OutputRecord("out", b"u", b"a", ())]))
    await asyncio.sleep(0)
    b = asyncio.create_task(rounds.send([OutputRecord("out", b"u", b"b", ())]))  # waits for round 2
    with pytest.raises(OSError, match="round 1"):
        await a
    assert await b == []


_rounds_seen: list[int] = []


async def _explode_once(records: list[OutputRecord]) -> list[tuple[OutputRecord, BaseException]]:
    _rounds_seen.append(len(records))
    await asyncio.sleep(0.01)
    if len(_rounds_seen) == 1:
        raise OSError("round 1")
    return []


async def test_a_topic_without_metadata_fails_only_its_own_records() -> None:
    """A dead-letter topic the producer may not see: the recommendations of the same round
    are written; only the dead letter waits (refused for good: retried slowly)."""
    producer = FakeProducer(lambda topic, value, n: None)
    producer.unknown_topics = {"dlq"}
    sink = sink_with(producer)
    rec = OutputRecord("out", b"u", b"{}", (), SOURCES[:1])
    dead = OutputRecord("dlq", b"u", b"{}", (("dlq.reason", b"x"),), SOURCES[1:2])
    written = await sink.write(batch(rec))
    blocked = asyncio.create_task(sink.write(batch(dead)))
    await asyncio.sleep(0.05)
    assert written == [rec] and producer.sent == [("out", b"{}")]
    assert sink.refusing and not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


async def test_a_write_cancelled_while_it_waits_for_a_round_is_not_sent() -> None:
    gate = asyncio.Event()

    async def send_all(records: list[OutputRecord]) -> list[tuple[OutputRecord, BaseException]]:
        sent.extend(records)
        await gate.wait()
        return []

    sent: list[OutputRecord] = []
    rounds = SendRounds(send_all)
    first = asyncio.create_task(rounds.send([OutputRecord("out", b"u", b"1", ())]))
    await asyncio.sleep(0)
    second = asyncio.create_task(rounds.send([OutputRecord("out", b"u", b"2", ())]))
    await asyncio.sleep(0)
    second.cancel()  # a stop, while round 1 is out
    gate.set()
    assert await first == []
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.01)
    assert [r.value for r in sent] == [b"1"]


async def test_rounds_recover_from_a_round_cancelled_before_it_ran() -> None:
    """Its cleanup never ran: the next write starts a round that answers both."""
    _rounds_seen[:] = [0]  # _explode_once answers from its second round on
    rounds = SendRounds(_explode_once)
    first = asyncio.create_task(rounds.send([OutputRecord("out", b"u", b"a", ())]))
    await asyncio.sleep(0)
    assert rounds._round is not None
    rounds._round.cancel()  # the loop tearing down, say
    second = asyncio.create_task(rounds.send([OutputRecord("out", b"u", b"b", ())]))
    assert await asyncio.wait_for(asyncio.gather(first, second), 2) == [[], []]


# -- a topic missing mid-run (issue 24, item 2) ----------------------------------------------


def test_an_unknown_topic_is_retried_but_told_apart() -> None:
    assert sink_module.missing_topic(UnknownTopicOrPartitionError())
    assert not sink_module.permanent(UnknownTopicOrPartitionError())  # it may be made again
    assert not sink_module.missing_topic(KafkaTimeoutError())


async def test_a_topic_missing_mid_run_makes_the_sink_not_ready_counted_and_said_at_a_bounded_pace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deleted after the start: each pass fails with UnknownTopicOrPartitionError. Not in
    silence: not ready, the gauge names how many topics, one line per interval (not per
    pass); once the topic is back the write goes through and all three clear."""
    back = asyncio.Event()
    producer = FakeProducer(lambda topic, value, n: None if back.is_set() else UnknownTopicOrPartitionError())
    sink = sink_with(producer)
    dead = OutputRecord("dlq", b"u", b"{}", (("dlq.reason", b"x"),), SOURCES[:1])
    task = asyncio.create_task(sink.write(batch(dead)))
    while producer.attempts < 20:
        await asyncio.sleep(0.005)
    assert sink.refusing and sink.missing_topics == {"dlq"}
    assert sink.metrics.sink_missing_topics._value.get() == 1
    said = [r for r in caplog.records if "TOPIC MISSING" in r.getMessage()]
    assert len(said) == 1 and "dlq" in said[0].getMessage()
    assert not [r for r in caplog.records if "will retry" in r.getMessage()]  # not a line a pass
    back.set()
    assert await asyncio.wait_for(task, 2) == [dead]
    assert not sink.refusing and sink.missing_topics == set()
    assert sink.metrics.sink_missing_topics._value.get() == 0


async def test_a_record_whose_inputs_were_revoked_is_no_longer_retried() -> None:
    """Its partition went to another member (the new owner redoes its inputs): the retry
    loop lets it go rather than keep writing for a partition this member does not own."""
    owned = {SOURCES[0].offset, SOURCES[1].offset}
    producer = FakeProducer(
        lambda topic, value, n: UnknownTopicOrPartitionError() if value == b"lost" else None
    )
    sink = KafkaSink(
        Sink(topic="out", dead_letter_topic="dlq"),
        Broker(),
        max_backoff_s=0.01,
        owned=lambda src: src.offset in owned,
    )
    sink.producers = {"": producer}  # type: ignore[dict-item]
    kept = OutputRecord("out", b"u", b"kept", (), SOURCES[:1])
    lost = OutputRecord("out", b"u", b"lost", (), SOURCES[1:2])
    task = asyncio.create_task(sink.write(batch(kept, lost)))
    while producer.attempts < 5:
        await asyncio.sleep(0.005)
    assert not task.done()
    owned.discard(SOURCES[1].offset)  # revoked
    assert await asyncio.wait_for(task, 2) == [kept]
    assert sink.metrics.revoked_outputs_dropped._value.get() == 1
    assert not sink.refusing
