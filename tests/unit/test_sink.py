"""The sink's handling of refusals, against a fake producer (a broker cannot be made to
refuse a given record on demand; the real broker is used in the fault suite)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, TopicAuthorizationFailedError

from pipeline.events import OutputRecord, SinkBatch
from pipeline.sinks import kafka as sink_module
from pipeline.sinks.kafka import KafkaSink
from pipeline.topology.schema import Broker, Sink
from tests.builders import raw_record


class FakeProducer:
    """Refuses per a rule; counts every attempt."""

    def __init__(self, refuse) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, bytes]] = []
        self.attempts = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers=None):
        self.attempts += 1
        error = self.refuse(topic, value, self.attempts)
        if error is not None:
            raise error
        self.sent.append((topic, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


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
    assert producer.attempts == 4  # one refusal, three dead letters, no retry of the refusal


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


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), TopicAuthorizationFailedError()])
def test_permanent_refusals(error: Exception) -> None:
    assert sink_module.permanent(error)
    assert not sink_module.permanent(KafkaTimeoutError())
