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
import struct
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors

from pipeline.events import RawRecord

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


async def step_past_undecodable(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    limit: int,
    stop: asyncio.Event | None = None,
    wait_ms: int = 300,
    generation_of: Callable[[TopicPartition], int] = lambda tp: 0,
) -> dict[TopicPartition, list[RawRecord]]:
    """Re-read each partition from ``starts`` one record at a time, up to its high watermark
    as last seen and at most ``limit`` records (the failed call read no further than its own
    max records past a position), and
    return what was read: good records, and a marker for each one that cannot be decoded
    (the partition is then moved past it). A partition that is not answered within
    ``wait_ms`` is left for the normal fetch: if the bad record is there, the next fetch
    fails again and this starts over, having taken what it read so far."""
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
                # Consumed one record at a time, the position is the record that raised.
                offset = await consumer.position(tp)
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
