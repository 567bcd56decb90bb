"""Retry budget and event deadlines (plain data, no I/O).

The retry budget caps retries at a share of recent first attempts (plus a small floor), so
that a partial outage cannot multiply the load on Triton. Deadlines come from event age: an
event's budget ends ``end_to_end_ms`` after its Kafka timestamp."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from pipeline.events import UserRequest


class RetryBudget:
    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self.clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for q in (self._requests, self._retries):
            while q and now - q[0] > self.window_s:
                q.popleft()

    def record_request(self) -> None:
        now = self.clock()
        self._requests.append(now)
        self._trim(now)  # bounded by the window even when nothing ever fails

    def try_spend(self) -> bool:
        """Assignment one retry from the budget if there is one left."""
        now = self.clock()
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_s * self.window_s
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True


def deadline_ms(rows: Iterable[UserRequest], end_to_end_ms: int) -> float:
    """When the last of these rows runs out of its end-to-end budget (epoch ms): a row is
    worth answering as long as its newest event is."""
    return max(e.source.timestamp_ms for r in rows for e in r.events) + end_to_end_ms


def split_stale(
    rows: list[UserRequest], end_to_end_ms: int, now_ms: float
) -> tuple[list[UserRequest], list[UserRequest]]:
    """(fresh, stale): a row is stale when its newest event is already past its budget."""
    fresh: list[UserRequest] = []
    stale: list[UserRequest] = []
    for row in rows:
        events = row.events
        newest = (
            events[0].source.timestamp_ms if len(events) == 1 else max(e.source.timestamp_ms for e in events)
        )
        (stale if newest + end_to_end_ms <= now_ms else fresh).append(row)
    return fresh, stale
