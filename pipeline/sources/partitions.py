"""The one owner of a partition's life in this member: assigned, taken from, finished,
committed, released.

    assign ─► take (offsets tracked, credits taken) ─► finish (committable, credits back)
           ─► commit (what is finished, in order) ─► release (drain, commit, forget)

Each assignment of a partition is a generation, and a record carries the generation it was
taken in. The revocation rule: work of a generation revoked since it was taken is neither
written nor made committable; the partition's next owner redoes it from the commit.

The source does the consumer's I/O and calls ``assign``, ``take`` and ``release``; the
runtime calls ``inputs_of``, ``without_revoked`` and ``finish`` around each write. Nothing
else changes offsets, positions or credits. With durable state, the users' histories of a
partition number follow it: restored on assignment (nothing taken of it meanwhile), their
last changes written and their store closed on release (``state/users.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from pipeline.events import RawRecord, SinkBatch
from pipeline.metrics import Metrics, PartitionReading
from pipeline.sources.credits import TopicCredits, bytes_by_topic
from pipeline.sources.offsets import OffsetTracker
from pipeline.ticks import every

if TYPE_CHECKING:
    from pipeline.state.users import UserState

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]  # (topic, partition)
Assignment = tuple[str, int, int]  # (topic, partition, generation): one assignment of a partition
CommitOffsets = Callable[[dict[PartitionKey, int]], Awaitable[None]]
DRAIN_POLL_S = 0.02  # how often a revocation looks at what is still in flight
COMMIT_TIMEOUT_S = 10.0  # a commit's bound (wiring lowers it to a third of liveness' bound)
COMMIT_FAILURE_LOG_S = 60.0  # a commit failing round after round is said this often

_ASSIGNMENT = operator.itemgetter(*map(RawRecord._fields.index, ("topic", "partition", "generation")))
_OFFSET = operator.itemgetter(RawRecord._fields.index("offset"))


class Inputs(dict[Assignment, list[int]]):
    """A batch's inputs: their offsets by the assignment they were taken in, and their bytes
    by topic (what they hold of their topics' bytes in flight, given back with them)."""

    __slots__ = ("nbytes",)

    def __init__(self, offsets: dict[Assignment, list[int]], nbytes: dict[str, int]) -> None:
        super().__init__(offsets)
        self.nbytes = nbytes


def offsets_by_assignment(sources: list[RawRecord]) -> dict[Assignment, list[int]]:
    """The inputs' offsets by the assignment they were taken in: judged and finished a
    partition at a time rather than a record at a time."""
    by_assignment: dict[Assignment, list[int]] = {}
    for assignment, offset in zip(map(_ASSIGNMENT, sources), map(_OFFSET, sources), strict=True):
        offsets = by_assignment.get(assignment)
        if offsets is None:
            by_assignment[assignment] = [offset]
        else:
            offsets.append(offset)
    return by_assignment


async def _nothing_to_commit(due: dict[PartitionKey, int]) -> None:
    raise RuntimeError(f"no committer set: {len(due)} partitions due")


class Partitions:
    def __init__(
        self, credits: TopicCredits, metrics: Metrics, drain_timeout_s: float, state: UserState | None = None
    ) -> None:
        self.credits = credits
        self.state = state
        self.commit_timeout_s = COMMIT_TIMEOUT_S
        self.on_released: list[Callable[[set[int]], None]] = []  # partition numbers no longer held
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self.tracker = OffsetTracker()
        self.finished = 0  # inputs finished (answered or dead-lettered): the watchdog's progress
        self.revoking: set[PartitionKey] = set()
        self.positions: dict[PartitionKey, int] = {}  # next offset to take
        # Last high watermark and commit seen, kept across rebalances: the lag of a partition
        # that is assigned but not fetched (paused, or wedged) stays visible.
        self.highs: dict[PartitionKey, int] = {}
        self.committed: dict[PartitionKey, int] = {}
        self.generations: dict[PartitionKey, int] = {}
        self._generation = 0
        self._commit_offsets: CommitOffsets = _nothing_to_commit

    def commit_with(self, commit_offsets: CommitOffsets) -> None:
        """How offsets reach the group: the source's consumer (or a test's list)."""
        self._commit_offsets = commit_offsets

    # ── assignment ──────────────────────────────────────────────────────────────────────
    def assign(self, keys: Iterable[PartitionKey]) -> None:
        """A new generation for the partitions just assigned."""
        self.revoking.clear()
        self._generation += 1
        keys = list(keys)
        for key in keys:
            self.generations[key] = self._generation
        if self.state is not None:
            numbers = {partition for _, partition in keys}
            held = set(self.generations)
            split = {n for n in numbers if any((topic, n) not in held for topic in self.credits.gates)}
            self.state.assigned(numbers, split)

    def generation_of(self, key: PartitionKey) -> int:
        return self.generations.get(key, 0)

    def is_current(self, record: RawRecord) -> bool:
        """Taken in the partition's current assignment (not in one revoked since)."""
        return self.is_current_assignment((record.topic, record.partition, record.generation))

    def is_current_assignment(self, assignment: Assignment) -> bool:
        return self.generations.get(assignment[:2]) == assignment[2]

    def taking(self, key: PartitionKey) -> bool:
        """Not being handed to another member, not waiting for its state: its records may
        be taken."""
        return key not in self.revoking and not self.restoring(key)

    def restoring(self, key: PartitionKey) -> bool:
        """Held until its users' histories are restored."""
        return self.state is not None and self.state.is_restoring(key[1])

    # ── take ────────────────────────────────────────────────────────────────────────────
    def take(self, key: PartitionKey, offsets: list[int], high: int | None, nbytes: int = 0) -> None:
        """Records of one partition handed on: tracked, positioned, a credit each, and their
        ``nbytes`` (``credits.records_bytes``) counted in flight."""
        topic, partition = key
        self.tracker.track(topic, partition, offsets)
        self.positions[key] = offsets[-1] + 1
        if high is not None:
            self.highs[key] = high
        self.metrics.events_consumed.labels(topic).inc(len(offsets))
        self.credits.take(topic, len(offsets), nbytes)
        self.metrics.in_flight_bytes.set(self.credits.in_flight_bytes)

    # ── finish ──────────────────────────────────────────────────────────────────────────
    def inputs_of(self, batch: SinkBatch) -> Inputs:
        sources = batch.sources
        return Inputs(offsets_by_assignment(sources), bytes_by_topic(sources))

    def without_revoked(self, batch: SinkBatch, inputs: Inputs) -> SinkBatch:
        """The batch less the outputs of work revoked since it was taken (its new owner
        redoes it: not written twice). Records are judged one by one: a re-read copy of an
        event shares its coordinates with the stale one."""
        if all(map(self.is_current_assignment, inputs)):
            return batch
        is_current = self.is_current
        kept = tuple(rec for rec in batch.records if not rec.sources or any(map(is_current, rec.sources)))
        self.metrics.revoked_outputs_dropped.inc(len(batch.records) - len(kept))
        return dataclasses.replace(batch, records=kept)

    def finish(self, inputs: Inputs) -> int:
        """Inputs answered or dead-lettered: offsets of the current assignment become
        committable (judged again: a rebalance can happen during the write), every credit
        and byte goes back. Returns how many."""
        per_topic: dict[str, int] = {}
        for assignment, offsets in inputs.items():
            topic, partition, _ = assignment
            if self.is_current_assignment(assignment):
                self.tracker.finish_many(topic, partition, offsets)
            per_topic[topic] = per_topic.get(topic, 0) + len(offsets)
        nbytes = inputs.nbytes
        for topic, count in per_topic.items():
            self.credits.give_back(topic, count, nbytes.get(topic, 0))
        self.metrics.in_flight_bytes.set(self.credits.in_flight_bytes)
        finished = sum(per_topic.values())
        self.finished += finished
        return finished

    @property
    def in_flight(self) -> int:
        return self.credits.in_flight

    # ── commit ──────────────────────────────────────────────────────────────────────────
    async def commit(self) -> None:
        """Every partition's finished prefix, in one request."""
        due = self.tracker.commits_due()
        if not due:
            return
        await self._commit_offsets(due)
        self.tracker.mark_committed(due)
        self.committed.update(due)
        self.metrics.committed.inc()

    async def commit_loop(self, stop: asyncio.Event, interval_s: float) -> None:
        """A commit a round, each bounded by ``commit_timeout_s``: a broker that stops
        answering leaves the commit waiting for the coordinator for ever, and the loop must
        go on making rounds (liveness reads them; an outage outside the process is not a
        reason to restart it). A failure is retried at the next round."""
        failing_since: float | None = None
        last_said = 0.0
        async for _ in every(interval_s, stop):
            try:
                await asyncio.wait_for(self.commit(), self.commit_timeout_s)
            except Exception as exc:  # TimeoutError included
                self.metrics.commit_failures.inc()
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if now - last_said >= COMMIT_FAILURE_LOG_S:  # one line a minute, not a round
                    last_said = now
                    why = (
                        f"no answer within {self.commit_timeout_s:g} s"
                        if isinstance(exc, TimeoutError)
                        else exc
                    )
                    log.warning(
                        "offset commit failing for %.0f s, retried every round: %r", now - failing_since, why
                    )
            else:
                if failing_since is not None:
                    log.info("offset commits succeed again after %.0f s", time.monotonic() - failing_since)
                failing_since, last_said = None, 0.0

    # ── release ─────────────────────────────────────────────────────────────────────────
    async def release(self, keys: set[PartitionKey]) -> None:
        """Stop taking from revoked partitions, drain their in-flight events within the
        bound, commit what finished, then forget them."""
        if not keys:
            return
        self.revoking |= keys
        deadline = time.monotonic() + self.drain_timeout_s
        while self.tracker.pending(keys) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        left = self.tracker.pending(keys)
        try:
            await asyncio.wait_for(self.commit(), self.commit_timeout_s)
        except Exception as exc:  # TimeoutError included: the next owner replays what is left
            log.warning("commit on revocation failed: %r", exc)
        self.tracker.release(keys)
        for key in keys:
            self.positions.pop(key, None)
            self.generations.pop(key, None)  # what is still in flight of it is now stale
        still_held = {partition for _, partition in self.generations}
        gone = {partition for _, partition in keys} - still_held
        for forget in self.on_released:  # what is kept per partition number elsewhere (outcomes)
            forget(gone)
        if self.state is not None:  # a partition number still held in another topic keeps its state
            await self.state.released(gone, self.drain_timeout_s)
        log.info("released %d partitions (%d events still in flight)", len(keys), left)

    # ── readings ────────────────────────────────────────────────────────────────────────
    def readings(
        self, assigned: Iterable[PartitionKey], high_of: Callable[[PartitionKey], int | None]
    ) -> list[PartitionReading]:
        """Lag, last commit and oldest open offset's age of each assigned partition: from
        the position, else the last commit, up to the highest high watermark seen (a
        partition paused since its assignment keeps the one from before)."""
        now = time.monotonic()
        readings = []
        for key in sorted(assigned):
            high = max(high_of(key) or 0, self.highs.get(key, 0))
            position = self.positions.get(key, self.committed.get(key))
            part = self.tracker.partitions.get(key)
            readings.append(
                PartitionReading(
                    key[0],
                    key[1],
                    max(0, high - position) if position is not None and high else None,
                    self.committed.get(key),
                    part.oldest_open_age(now) if part is not None else 0.0,
                )
            )
        return readings
