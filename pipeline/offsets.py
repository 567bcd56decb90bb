"""Per-partition offset tracking for out-of-order completion (plain data, no I/O).

A partition's committable offset is the lowest offset consumed and not yet finished (or
one past the last finished when none is open): a crash then replays, never skips."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class PartitionOffsets:
    def __init__(self) -> None:
        self._open: deque[int] = deque()  # consumed offsets, ascending, head = oldest
        self._finished: set[int] = set()  # finished but behind an unfinished one
        self.next_commit: int | None = None
        self.committed: int | None = None

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

    def track(self, topic: str, partition: int, offsets: Iterable[int]) -> None:
        part = self.partitions.setdefault((topic, partition), PartitionOffsets())
        for offset in offsets:
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
