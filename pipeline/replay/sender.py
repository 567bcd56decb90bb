"""Send a replay's rows to the destination topic: paced, with bounded memory, checkpointed
as the broker acknowledges, resumable without sending an acknowledged row twice.

Every record carries ``origin: backfill`` (lanes match it, outputs carry it),
``replay.run`` (the run: the backfill topologies judge event age against it) and
``replay.row`` (its row number: how a resumed run knows what is already in the topic).

A row the producer refuses at ``send`` (too large), and a topic replay's source record the
client cannot decode, go to the reject file (``rejects.py``), counted, and the replay goes
on: the acknowledged prefix passes such a row like a skipped one, so a resume does not stop
on it again. Any other failure stops the replay at its checkpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from pipeline.kafka_io import batches_to_end, high_watermarks, topic_partitions
from pipeline.operators.parse import REPLAY_RUN_HEADER
from pipeline.replay.checkpoint import Checkpoint
from pipeline.replay.files import Row
from pipeline.replay.progress import Counts, Pacer, Progress
from pipeline.replay.rejects import REFUSED, TOO_LARGE, RejectFile

ORIGIN_HEADER = "origin"
ROW_HEADER = "replay.row"
OWN_HEADERS = frozenset({ORIGIN_HEADER, REPLAY_RUN_HEADER, ROW_HEADER})
MAX_PENDING = 20_000  # sends awaiting acknowledgement (the memory bound with the producer's buffer)
CHECKPOINT_EVERY_S = 1.0
FINAL_ACK_TIMEOUT_S = 60.0


def record_headers(row: Row, run: bytes) -> list[tuple[str, bytes]]:
    """The row's own headers (the replay's replaced) and the replay's."""
    headers = [(k, v) for k, v in row.headers if k not in OWN_HEADERS]
    headers += [
        (ORIGIN_HEADER, b"backfill"),
        (REPLAY_RUN_HEADER, run),
        (ROW_HEADER, str(row.number).encode()),
    ]
    return headers


class ReplayFailed(RuntimeError):
    """A send the producer gave up on: the replay stops at its checkpoint (run it again)."""


class _Rejected:
    """A pending entry for a row set aside in the reject file."""


REJECTED = _Rejected()


@dataclass
class Sender:
    producer: AIOKafkaProducer
    topic: str
    checkpoint: Checkpoint
    checkpoint_path: Path | None
    progress: Progress
    rate: float = 0.0  # rows per second; 0: as fast as the broker acknowledges
    counts: Counts = field(default_factory=Counts)
    already_sent: set[int] = field(default_factory=set)
    rejects: RejectFile | None = None  # None: a refused row stops the replay (ReplayFailed)
    _pending: collections.deque[tuple[int, asyncio.Future[RecordMetadata] | _Rejected | None]] = field(
        default_factory=collections.deque
    )

    def __post_init__(self) -> None:
        # Rows an earlier attempt got into the topic sit before every send of this one. Until
        # the prefix is past all of them the marks stay where the scan found them: a mark moved
        # past one (by an acknowledgement of this attempt) would hide it from the next resume,
        # and it would be sent twice.
        self._marks_held_below = max(self.already_sent, default=-1) + 1

    async def run(self, rows: AsyncIterator[Row], stop: asyncio.Event) -> bool:
        """Send every row from the checkpoint on; True when the source is done, False when
        ``stop`` cut it short. The checkpoint is saved either way (ReplayFailed too)."""
        pacer = Pacer(self.rate)
        next_save = time.monotonic() + CHECKPOINT_EVERY_S
        run = self.checkpoint.run_id.encode()
        finished = False
        try:
            async for row in rows:
                if stop.is_set():
                    break
                self.counts.read += 1
                await self._send(row, run)
                await pacer.wait(self.counts.read)
                self._advance()
                if len(self._pending) >= MAX_PENDING:
                    await self._wait_oldest()
                now = time.monotonic()
                if now >= next_save:
                    next_save = now + CHECKPOINT_EVERY_S
                    self._save()
                    self.progress.update(self.counts, self.checkpoint.next_row + len(self._pending))
            else:
                finished = True
        finally:
            # However the loop ended (done, stopped, a row refused), what is in flight gets its
            # answer first (bounded), so the checkpoint holds everything acknowledged.
            await self._settle()
            self.checkpoint.finished = finished and not self._pending
            self._save()
            self.progress.update(self.counts, self.checkpoint.next_row)
        if self._pending:  # a send failed, or its answer did not come in time
            self._advance()  # raises ReplayFailed for a failed one
            raise ReplayFailed(
                f"row {self._pending[0][0]}: no acknowledgement in {FINAL_ACK_TIMEOUT_S:.0f} s"
            )
        return self.checkpoint.finished

    async def _send(self, row: Row, run: bytes) -> None:
        if row.reject is not None:  # a source record that cannot be sent on (undecodable)
            if self.rejects is None:
                raise ReplayFailed(f"row {row.number}: {row.reject[0]}: {row.reject[1]}")
            self._reject(row, *row.reject)
            return
        if row.value is None:
            if row.outside_time_range:
                self.counts.outside_time_range += 1
            else:
                self.counts.skipped += 1
            self._pending.append((row.number, None))
            return
        if row.number in self.already_sent:
            self.counts.already_sent += 1
            self._pending.append((row.number, None))
            return
        headers = record_headers(row, run)
        try:
            future = await self.producer.send(self.topic, row.value, key=row.key, headers=headers)
        except REFUSED as err:  # the row itself: larger than the producer's max_request_size
            if self.rejects is None:
                raise ReplayFailed(f"row {row.number}: cannot be sent: {err!r}") from err
            self._reject(row, TOO_LARGE, f"{type(err).__name__}: {err}")
            return
        except KafkaError as err:  # refused before sending for another reason: stop here
            raise ReplayFailed(f"row {row.number}: cannot be sent: {err!r}") from err
        self.counts.sent += 1
        self._pending.append((row.number, future))

    def _reject(self, row: Row, reason: str, error: str) -> None:
        assert self.rejects is not None
        self.rejects.add(row.number, reason, error, row.value, row.key, row.headers)
        self.counts.rejected += 1
        self._pending.append((row.number, REJECTED))

    def _advance(self) -> None:
        """Move the acknowledged prefix over the sends that are done, oldest first."""
        pending, checkpoint = self._pending, self.checkpoint
        while pending:
            number, future = pending[0]
            if isinstance(future, _Rejected):
                checkpoint.rejected += 1
            elif future is not None:
                if not future.done():
                    return
                error = future.exception()
                if error is not None:
                    raise ReplayFailed(f"row {number}: the broker did not take it: {error!r}") from error
                meta = future.result()
                if number >= self._marks_held_below:
                    marks = checkpoint.partition_marks
                    marks[meta.partition] = max(marks.get(meta.partition, 0), meta.offset + 1)
                checkpoint.acknowledged += 1
                self.counts.acknowledged += 1
            else:
                checkpoint.skipped += 1
            pending.popleft()
            checkpoint.next_row = number + 1

    async def _wait_oldest(self) -> None:
        future = self._pending[0][1]
        if isinstance(future, asyncio.Future):
            await asyncio.wait([future])
        self._advance()

    async def _settle(self) -> None:
        """Wait (bounded) for every send in flight, then move the prefix as far as it goes."""
        futures = [f for _, f in self._pending if isinstance(f, asyncio.Future) and not f.done()]
        if futures:
            await asyncio.wait(futures, timeout=FINAL_ACK_TIMEOUT_S)
        with contextlib.suppress(ReplayFailed):
            self._advance()

    def _save(self) -> None:
        if self.rejects is not None:
            self.rejects.sync()  # no checkpoint past a rejected row whose line could be lost
        if self.checkpoint_path is not None:
            self.checkpoint.save(self.checkpoint_path)


async def destination_ends(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    """Where a fresh replay's records will start, per destination partition: the high
    watermarks a fetch reports. These marks must not be past the run's first record there
    (a resume reads from them, and would miss and send again what lies before), so they are
    not ListOffsets' answer, which the embedded broker gets wrong."""
    tps = await topic_partitions(consumer, topic)
    ends = await high_watermarks(consumer, tps)
    return {tp.partition: offset for tp, offset in ends.items()}


async def rows_already_sent(consumer: AIOKafkaConsumer, checkpoint: Checkpoint, topic: str) -> set[int]:
    """Rows past the checkpoint's prefix that an interrupted run got into the topic anyway:
    read from the partition marks to the end (at most the sends of the last second or so)."""
    tps = await topic_partitions(consumer, topic)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, checkpoint.partition_marks.get(tp.partition, 0))
    run = checkpoint.run_id.encode()
    found: set[int] = set()
    async for batch in batches_to_end(consumer, tps):
        for records in batch.values():
            for rec in records:
                headers = dict(rec.headers)
                if headers.get(REPLAY_RUN_HEADER) == run and ROW_HEADER in headers:
                    number = int(headers[ROW_HEADER])
                    if number >= checkpoint.next_row:
                        found.add(number)
    return found
