"""Per-partition offset tracking for out-of-order completion (plain data, no I/O).

A partition's committable offset is the lowest offset consumed and not yet finished (or
one past the last finished when none is open): a crash then replays, never skips."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

# Fetch times kept beyond twice the unfinished offsets before those of finished fetches are
# dropped: behind a pinned head the entries stay this few, and the pass that drops them runs
# once per this many fetches at most.
TAKEN_SLACK = 64


class PartitionOffsets:
    """Tracked offsets as ascending [start, end) ranges (consecutive offsets share one), and
    the set of those not finished yet. Memory is bounded by the unfinished offsets (the
    credits bound them) plus the gaps between ranges, even while one unfinished record holds
    the head and thousands finish behind it."""

    def __init__(self) -> None:
        self._ranges: deque[list[int]] = deque()  # head = _ranges[0][0], the oldest not passed
        self._unfinished: set[int] = set()
        # (first offset of a fetch, when), ascending: each covers up to the next one's start.
        # Only a fetch holding an unfinished offset can hold the head, now or later: the others'
        # times are dropped, so there are at most about twice as many as unfinished offsets.
        self._taken: deque[tuple[int, float]] = deque()
        self.next_commit: int | None = None
        self.committed: int | None = None

    def taken_at(self, first_offset: int, when: float) -> None:
        """A fetch starting at ``first_offset`` was taken at ``when`` (its offsets tracked)."""
        self._taken.append((first_offset, when))
        if len(self._taken) > 2 * len(self._unfinished) + TAKEN_SLACK:
            self._forget_finished_fetches()

    def _forget_finished_fetches(self) -> None:
        """Drop the times of fetches whose every offset finished (the newest is kept): only
        one holding an unfinished offset can become the head's. Behind a pinned head, where
        the fetches behind it finish one by one, the entries stay a few, not one a fetch. At
        most one entry per unfinished offset is left, so this runs once per as many fetches
        as there are unfinished offsets (plus TAKEN_SLACK): amortised O(log n) a fetch."""
        taken = list(self._taken)  # indexed below: a deque's middle is O(n) away
        open_offsets = sorted(self._unfinished)
        kept: deque[tuple[int, float]] = deque()
        i, n, newest = 0, len(open_offsets), len(taken) - 1
        for j, entry in enumerate(taken):
            first = entry[0]
            while i < n and open_offsets[i] < first:
                i += 1
            if j == newest or (i < n and open_offsets[i] < taken[j + 1][0]):
                kept.append(entry)
        self._taken = kept

    def oldest_open_age(self, now: float) -> float:
        """Seconds since the oldest unfinished offset was taken (0: none open). A partition
        whose commit cannot move shows here long before anything else notices."""
        if not self._ranges:
            return 0.0
        self._forget_taken_before(self._ranges[0][0])
        return now - self._taken[0][1] if self._taken else 0.0

    def _forget_taken_before(self, head: int) -> None:
        while len(self._taken) > 1 and self._taken[1][0] <= head:
            self._taken.popleft()

    def track(self, offset: int) -> None:
        self._extend(offset, offset + 1)
        self._unfinished.add(offset)

    def track_many(self, offsets: list[int]) -> None:
        """As ``track`` of each; a run of consecutive offsets (a fetch without gaps) in one
        range and one set update."""
        if not offsets:
            return
        first, last = offsets[0], offsets[-1]
        if last - first + 1 != len(offsets) or offsets != list(range(first, last + 1)):
            for offset in offsets:  # gaps (compaction, transaction markers): one at a time
                self.track(offset)
            return
        self._extend(first, last + 1)
        self._unfinished.update(offsets)

    def _extend(self, start: int, end: int) -> None:
        """Offsets [start, end) taken: they join the last range if they follow it."""
        last = self._ranges[-1] if self._ranges else None
        if last is not None and start < last[1]:
            raise ValueError(f"offset {start} tracked out of order (last {last[1] - 1})")
        if last is not None and start == last[1]:
            last[1] = end
        else:
            self._ranges.append([start, end])

    def finish(self, offset: int) -> None:
        # already finished (a duplicate ack), from before a reset, or never taken here: no-op
        self.finish_many((offset,))

    def finish_many(self, offsets: Iterable[int]) -> None:
        """Finished offsets leave the open set; the head moves once past what is finished."""
        before = len(self._unfinished)
        self._unfinished.difference_update(offsets)
        if len(self._unfinished) != before:
            self._advance()

    def _advance(self) -> None:
        """Move the head past what is finished (each offset is passed once: amortised O(1))."""
        while self._ranges:
            head = self._ranges[0]
            while head[0] < head[1] and head[0] not in self._unfinished:
                head[0] += 1
            if head[0] < head[1]:
                break
            self.next_commit = head[1]
            self._ranges.popleft()
        if self._ranges:
            self.next_commit = self._ranges[0][0]
            self._forget_taken_before(self._ranges[0][0])
        else:
            self._taken.clear()

    @property
    def pending(self) -> int:
        """Offsets taken and not yet passed by the head (unfinished, or behind one)."""
        return sum(end - start for start, end in self._ranges)

    def commit_due(self) -> int | None:
        """The offset to commit now, or None if nothing advanced since the last commit."""
        target = self._ranges[0][0] if self._ranges else self.next_commit
        if target is None or target == self.committed:
            return None
        return target


class OffsetTracker:
    """All partitions this consumer owns. Keys are (topic, partition)."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionOffsets] = {}

    def track(self, topic: str, partition: int, offsets: Iterable[int], now: float | None = None) -> None:
        part = self.partitions.setdefault((topic, partition), PartitionOffsets())
        taken = offsets if isinstance(offsets, list) else list(offsets)
        if not taken:
            return
        part.track_many(taken)
        part.taken_at(taken[0], time.monotonic() if now is None else now)

    def finish(self, topic: str, partition: int, offset: int) -> None:
        part = self.partitions.get((topic, partition))
        if part is not None:
            part.finish(offset)

    def finish_many(self, topic: str, partition: int, offsets: Iterable[int]) -> None:
        part = self.partitions.get((topic, partition))
        if part is not None:
            part.finish_many(offsets)

    def commits_due(self) -> dict[tuple[str, int], int]:
        due = {}
        for key, part in self.partitions.items():
            target = part.commit_due()
            if target is not None:
                due[key] = target
        return due

    def mark_committed(self, commits: dict[tuple[str, int], int]) -> None:
        for key, offset in commits.items():
            part = self.partitions.get(key)
            if part is not None:
                part.committed = offset

    def pending(self, keys: Iterable[tuple[str, int]] | None = None) -> int:
        selected = self.partitions if keys is None else keys
        return sum(self.partitions[k].pending for k in selected if k in self.partitions)

    def release(self, keys: Iterable[tuple[str, int]]) -> None:
        for key in keys:
            self.partitions.pop(key, None)
