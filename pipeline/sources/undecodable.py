"""Records the Kafka client cannot decode: a header key that is not UTF-8, a bad CRC, a
compression codec it lacks. aiokafka raises from ``getmany`` without saying which record,
and every retry raises again on the same one: a crash-loop if nothing steps past it. Worse,
the records of other partitions drained in the failed call are lost with the exception while
their fetch positions have moved on.

So after such an error the source re-reads each partition from its own position (the next
offset it actually took) one record at a time: the good records read meanwhile are handed on
as usual, and the record that raises is handed on as a marker (``undecodable`` set) that
parse turns into a dead letter, so its offset is finished and committed past like any other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from prometheus_client import Counter

from pipeline.errors import SourceFailed
from pipeline.events import RawRecord

log = logging.getLogger(__name__)
LOOKUP_TIMEOUT_S = 5.0  # bound on one lookup of where the record that raised is
LOOKUP_RETRY_S = 1.0  # wait after a retriable lookup failure
LOOKUP_ERROR_LOG_EVERY = 30  # failed lookups in a row between two warnings (like failed fetches)

DECODE_ERRORS: tuple[type[BaseException], ...] = (
    UnicodeDecodeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.UnsupportedCodecError,
    struct.error,
)


def is_undecodable(error: BaseException) -> bool:
    return isinstance(error, DECODE_ERRORS)


def raw(m: ConsumerRecord[bytes, bytes], generation: int = 0) -> RawRecord:
    return RawRecord(
        m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, tuple(m.headers), None, generation
    )


async def _position_of_failed(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    stop: asyncio.Event | None,
    fetch_errors: Counter | None,
) -> int | None:
    """Where the record that just raised is (consumed one at a time, the position is that
    record), or None: the partition is no longer assigned, or the source stopped. Each
    failure is counted as a fetch error; a retriable one (a broker outage, a lookup past
    LOOKUP_TIMEOUT_S) is retried every LOOKUP_RETRY_S and warned of every
    LOOKUP_ERROR_LOG_EVERY-th time, anything else raises SourceFailed: retrying it would
    only repeat it."""
    failures = 0  # in a row
    while True:
        try:
            # aiokafka's position() waits on, without end, for a position it does not have
            offset = int(await asyncio.wait_for(consumer.position(tp), LOOKUP_TIMEOUT_S))
        except kafka_errors.IllegalStateError:
            return None  # no longer assigned: a rebalance went on meanwhile
        except (TimeoutError, kafka_errors.KafkaError) as error:
            if fetch_errors is not None:
                fetch_errors.labels(type(error).__name__).inc()
            if isinstance(error, kafka_errors.KafkaError) and not error.retriable:
                raise SourceFailed(
                    f"looking up where an undecodable record is in {tp.topic}[{tp.partition}] "
                    f"failed: {error!r}"
                ) from error
            if failures % LOOKUP_ERROR_LOG_EVERY == 0:  # not a line a second
                log.warning(
                    "looking up where an undecodable record is in %s[%d] failed (%d in a row), "
                    "retrying every %.1f s: %r",
                    tp.topic,
                    tp.partition,
                    failures + 1,
                    LOOKUP_RETRY_S,
                    error,
                )
            failures += 1
        else:
            if failures:
                log.info("looked up %s[%d] after %d failed attempts", tp.topic, tp.partition, failures)
            return offset
        if stop is None:
            await asyncio.sleep(LOOKUP_RETRY_S)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOKUP_RETRY_S)
            if stop.is_set():
                return None


async def step_past_undecodable(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    limit: int,
    stop: asyncio.Event | None = None,
    wait_ms: int = 300,
    generation_of: Callable[[TopicPartition], int] = lambda tp: 0,
    fetch_errors: Counter | None = None,
) -> dict[TopicPartition, list[RawRecord]]:
    """Re-read each partition from ``starts`` one record at a time, up to its high watermark
    as last seen and at most ``limit`` records (the failed call read no further than its own
    max records past a position), and
    return what was read: good records, and a marker for each one that cannot be decoded
    (the partition is then moved past it). A partition that is not answered within
    ``wait_ms`` is left for the normal fetch: if the bad record is there, the next fetch
    fails again and this starts over, having taken what it read so far. Failures to look
    up where the bad record is are counted in ``fetch_errors`` (pipeline_fetch_errors_total)
    and retried until ``stop``, or raise SourceFailed when not retriable."""
    read: dict[TopicPartition, list[RawRecord]] = {}
    for tp, start in starts.items():
        # The failed call read no further than the partition's end as it last saw it: a
        # clean partition under live traffic is re-read that far, not followed record by
        # record as new ones arrive (which held everything up for ~40 s in the soak).
        end = consumer.highwater(tp)
        try:
            consumer.seek(tp, start)  # drops what the failed call buffered past our position
        except kafka_errors.IllegalStateError:
            continue  # no longer assigned: a rebalance went on meanwhile
        taken: list[RawRecord] = []
        while (
            len(taken) < limit
            and (end is None or (taken[-1].offset + 1 if taken else start) < end)
            and not (stop is not None and stop.is_set())
        ):
            try:
                got = await consumer.getmany(tp, timeout_ms=wait_ms, max_records=1)
            except kafka_errors.IllegalStateError:
                break
            except DECODE_ERRORS as error:
                offset = await _position_of_failed(consumer, tp, stop, fetch_errors)
                if offset is None:
                    break  # left for the normal fetch (revoked, or stopping)
                why = f"{type(error).__name__}: {error}"
                taken.append(
                    RawRecord(tp.topic, tp.partition, offset, -1, None, None, (), why, generation_of(tp))
                )
                consumer.seek(tp, offset + 1)
                break
            if not got.get(tp):
                break  # caught up with the partition: nothing undecodable here
            taken.extend(raw(m, generation_of(tp)) for m in got[tp])
        if taken:
            read[tp] = taken
    return read
