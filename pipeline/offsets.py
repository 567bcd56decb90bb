"""Per-partition offset tracking for out-of-order completion (plain data, no I/O).

A partition's committable offset is the lowest offset consumed and not yet finished (or
one past the last finished when none is open): a crash then replays, never skips."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable


class PartitionOffsets:
    def __init__(self) -> None:
        self._open: deque[int] = deque()  # consumed offsets, ascending, head = oldest
        self._finished: set[int] = set()  # finished but behind an unfinished one
        self._taken: deque[tuple[int, float]] = deque()  # (first offset of a fetch, when)
        self.next_commit: int | None = None
        self.committed: int | None = None

    def taken_at(self, first_offset: int, when: float) -> None:
        self._taken.append((first_offset, when))

    def oldest_open_age(self, now: float) -> float:
        """Seconds since the oldest unfinished offset was taken (0: none open). A partition
        whose commit cannot move shows here long before anything else notices."""
        if not self._open:
            return 0.0
        self._forget_taken_before(self._open[0])
        return now - self._taken[0][1] if self._taken else 0.0

    def _forget_taken_before(self, head: int) -> None:
        while len(self._taken) > 1 and self._taken[1][0] <= head:
            self._taken.popleft()

    def track(self, offset: int) -> None:
        if self._open and offset <= self._open[-1]:
            raise ValueError(f"offset {offset} tracked out of order (last {self._open[-1]})")
        self._open.append(offset)

    def finish(self, offset: int) -> None:
        if not self._open or offset < self._open[0] or offset in self._finished:
            return  # already finished (a duplicate ack) or from before a reset
        self._finished.add(offset)
        while self._open and self._open[0] in self._finished:
            done = self._open.popleft()
            self._finished.discard(done)
            self.next_commit = done + 1
        if self._open:
            self._forget_taken_before(self._open[0])
        else:
            self._taken.clear()

    @property
    def pending(self) -> int:
        return len(self._open)

    def commit_due(self) -> int | None:
        """The offset to commit now, or None if nothing advanced since the last commit."""
        target = self._open[0] if self._open else self.next_commit
        if target is None or target == self.committed:
            return None
        return target


class OffsetTracker:
    """All partitions this consumer owns. Keys are (topic, partition)."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionOffsets] = {}

    def track(self, topic: str, partition: int, offsets: Iterable[int], now: float | None = None) -> None:
        part = self.partitions.setdefault((topic, partition), PartitionOffsets())
        first = True
        for offset in offsets:
            if first:
                part.taken_at(offset, time.monotonic() if now is None else now)
                first = False
            part.track(offset)

    def finish(self, topic: str, partition: int, offset: int) -> None:
        part = self.partitions.get((topic, partition))
        if part is not None:
            part.finish(offset)

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
