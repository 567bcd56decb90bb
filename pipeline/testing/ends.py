"""In-memory ends: a source over lists of records and a sink that captures what it is
given. They keep the contracts of ``pipeline/sources`` and ``pipeline/sinks``: records are
taken through the partitions' owner (offsets, credits, generations, the same hold rule as
Kafka's), and commits land in a list a test can read."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Collection, Iterable

import orjson

from pipeline.events import OutputRecord, RawRecord, SinkBatch
from pipeline.metrics import PartitionReading
from pipeline.sources.credits import records_bytes
from pipeline.sources.partitions import PartitionKey, Partitions
from pipeline.state.changelog import ChangelogEntry, ChangelogReset

IDLE_WAIT_S = 0.005  # nothing to take: how long the loop waits for new records or room


class ListSource:
    """One consumer-group member that owns every partition its records name. Records are
    numbered per partition as they are added (their offsets are ignored), so a test can add
    more while the pipeline runs; ``rebalance`` revokes and assigns as an eager group does."""

    def __init__(
        self,
        partitions: Partitions,
        records: Iterable[RawRecord] = (),
        max_poll_records: int = 500,
        committed: dict[PartitionKey, int] | None = None,
    ):
        self.partitions = partitions
        self.max_poll_records = max_poll_records
        self.logs: dict[PartitionKey, list[RawRecord]] = {}
        self.commits: list[dict[PartitionKey, int]] = []  # every commit, in order
        self.committed: dict[PartitionKey, int] = dict(committed or {})  # the group's, at the start
        self.done_before = sum(self.committed.values())  # finished by an earlier member
        self.assignment: set[PartitionKey] = set()
        self.held: set[str] = set()
        self._positions: dict[PartitionKey, int] = {}
        self._added: asyncio.Event | None = None
        self._rebalancing = False
        partitions.commit_with(self._commit)
        self.add(records)

    def add(self, records: Iterable[RawRecord]) -> None:
        """Appended to their partitions; a partition new since the start is assigned."""
        for record in records:
            log = self.logs.setdefault((record.topic, record.partition), [])
            log.append(record._replace(offset=len(log)))
        if self._added is not None:
            if not self._rebalancing and (
                new := self._every_topic(self.logs) - self.assignment - self._positions.keys()
            ):
                self._assign(new)
            self._added.set()

    def _every_topic(self, keys: Iterable[PartitionKey]) -> set[PartitionKey]:
        """Each partition number in every input topic, as a group assigns them (co-partitioned)."""
        numbers = {partition for _, partition in keys}
        return {(topic, n) for topic in self.partitions.credits.gates for n in numbers}

    async def _commit(self, due: dict[PartitionKey, int]) -> None:
        self.commits.append(dict(due))
        self.committed.update(due)

    async def start(self) -> None:
        self._added = asyncio.Event()
        self._assign(self._every_topic(self.logs))

    def _assign(self, keys: set[PartitionKey]) -> None:
        self.partitions.assign(keys)
        self.assignment |= keys
        for key in keys:  # a new assignment reads from the group's commit
            self._positions[key] = self.committed.get(key, 0)
        self.held.clear()

    async def rebalance(self, assigned: set[PartitionKey]) -> None:
        """As an eager group does: the whole assignment is drained, committed and let go,
        then ``assigned`` (possibly the same partitions) starts from its commits."""
        self._rebalancing = True
        try:
            await self.partitions.release(set(self.assignment))
            self.assignment.clear()
            self._assign(assigned)
        finally:
            self._rebalancing = False

    async def run(self, emit: Callable[[list[RawRecord]], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.partitions.credits.update_held(self.held)
            taken = self._take()
            if taken:
                emit(taken)
                await asyncio.sleep(0)
                continue
            assert self._added is not None
            self._added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._added.wait(), IDLE_WAIT_S)

    def _take(self) -> list[RawRecord]:
        taken: list[RawRecord] = []
        for key in sorted(self.assignment):
            room = self.max_poll_records - len(taken)
            if room <= 0 or key[0] in self.held or not self.partitions.taking(key):
                continue
            position = self._positions[key]
            records = self.logs.get(key, [])[position : position + room]
            if not records:
                continue
            generation = self.partitions.generation_of(key)
            records = [r._replace(generation=generation) for r in records]
            offsets = [r.offset for r in records]
            self.partitions.take(key, offsets, len(self.logs[key]), records_bytes(records))
            self._positions[key] = position + len(records)
            taken.extend(records)
        return taken

    async def stop(self) -> None:
        self._added = None

    def lag(self) -> int:
        return sum(len(self.logs.get(key, [])) - self._positions.get(key, 0) for key in self.assignment)

    def resume_if_room(self) -> None:
        """Nothing is paused here: held topics are looked at again on every pass."""

    def partition_readings(self) -> list[PartitionReading]:
        return self.partitions.readings(self.assignment, lambda key: len(self.logs.get(key, [])))

    @property
    def total(self) -> int:
        return sum(len(log) for log in self.logs.values())


class CaptureSink:
    """Keeps every record written, in order. ``hold()`` makes writes wait (acknowledgements
    held back) until ``release()``; ``entered`` counts the writes begun."""

    def __init__(self, dead_letter_topic: str, records: Iterable[OutputRecord] = ()) -> None:
        self.dead_letter_topic = dead_letter_topic
        self.records: list[OutputRecord] = []
        self.logs: dict[PartitionKey, list[OutputRecord]] = {}  # records written to a partition named
        for rec in records:
            self._keep(rec)
        self.entered = 0
        self._open = asyncio.Event()
        self._open.set()
        self._stopped = False

    @property
    def refusing(self) -> bool:
        return False

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Writes still held fail, as a producer's pending sends do when it closes."""
        self._stopped = True
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def write(self, batch: SinkBatch) -> list[OutputRecord]:
        self.entered += 1
        await self._open.wait()
        if self._stopped:
            raise RuntimeError("the sink was stopped")
        for rec in batch.records:
            self._keep(rec)
        return list(batch.records)

    def _keep(self, rec: OutputRecord) -> None:
        self.records.append(rec)
        if rec.partition is not None:
            self.logs.setdefault((rec.topic, rec.partition), []).append(rec)

    def acked_offset(self, topic: str, partition: int) -> int | None:
        written = len(self.logs.get((topic, partition), ()))
        return written - 1 if written else None

    def answers(self) -> Counter[tuple[str, int, int]]:
        """How many outputs (recommendations and dead letters) name each input."""
        return Counter((s.topic, s.partition, s.offset) for rec in self.records for s in rec.sources)

    def recommendations(self) -> list[dict[str, object]]:
        """Outputs that answer inputs, dead letters aside (the changelog answers none)."""
        return [
            orjson.loads(r.value) for r in self.records if r.sources and r.topic != self.dead_letter_topic
        ]

    def dead_letters(self) -> list[OutputRecord]:
        return [r for r in self.records if r.topic == self.dead_letter_topic]

    def dead_letter_reasons(self) -> list[str]:
        return [dict(r.headers)["dlq.reason"].decode() for r in self.dead_letters()]


class CapturedChangelog:
    """The changelog as a CaptureSink wrote it: a partition's records are numbered in the
    order written. ``fail_reads`` makes that many reads fail first (a broker away); reads of
    the ``held`` partitions (None: all) wait until ``release_reads``."""

    def __init__(
        self, sink: CaptureSink, topic: str, batch: int = 100, held: Collection[int] | None = ()
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.batch = batch
        self.fail_reads = 0
        self.reads = 0
        self.held = None if held is None else set(held)
        self._released = asyncio.Event()

    def release_reads(self) -> None:
        self._released.set()

    async def prepare(self, input_topics: list[str]) -> None: ...

    async def read(
        self, partition: int, start: int, stall_s: float
    ) -> AsyncGenerator[tuple[list[ChangelogEntry], int], None]:
        if self.held is None or partition in self.held:
            await self._released.wait()
        self.reads += 1
        if self.fail_reads:
            self.fail_reads -= 1
            raise TimeoutError(f"{self.topic}[{partition}]: no progress for {stall_s} s (made to fail)")
        log = self.sink.logs.get((self.topic, partition), [])
        if start > len(log):
            raise ChangelogReset(f"{self.topic}[{partition}] ends at {len(log)}, the store reached {start}")
        end = len(log)
        for at in range(start, end, self.batch):
            chunk = log[at : min(at + self.batch, end)]
            yield [ChangelogEntry(at + i, rec.key, rec.value) for i, rec in enumerate(chunk)], end
            await asyncio.sleep(0)
