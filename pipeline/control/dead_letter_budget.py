"""Dead-letter budget (plain data, no I/O): a model that fails every request (a broken
version rolled out, a changed signature) must not empty the backlog into the dead-letter
topic at full speed. When more than ``max_share`` of the events finished in the last
``window_s`` were dead-lettered for one model-side reason, the budget trips: the source
holds consumption for ``hold_s`` (doubling on each trip in a row, up to ``max_hold_s``),
readiness turns false and the trip is logged, so a person (or the model's rollback) can act
while the events wait in Kafka."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Reasons the model side gives: bad input rows are expected at a low rate; the same reason
# for most events means the model (or its contract) is wrong, not the events.
MODEL_SIDE_REASONS = frozenset(
    {
        "invalid_argument",
        "bad_output",
        "retries_exhausted",
        "internal_error",
        "model_error",
        "model_not_found",
    }
)


@dataclass(frozen=True)
class Trip:
    reason: str
    share: float
    events: int
    hold_s: float


class DeadLetterBudget:
    def __init__(
        self,
        max_share: float,
        window_s: float,
        min_events: int,
        hold_s: float,
        max_hold_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_share, self.window_s, self.min_events = max_share, window_s, min_events
        self.hold_s, self.max_hold_s = hold_s, max_hold_s
        self.clock = clock
        self._seen: deque[tuple[float, int, Counter[str]]] = deque()  # (time, finished, dead by reason)
        self._finished = 0
        self._dead: Counter[str] = Counter()
        self.held_until = 0.0
        self._next_hold_s = hold_s
        self._last_trip = -float("inf")
        self.trips = 0

    @property
    def holding(self) -> bool:
        return self.clock() < self.held_until

    def observe(self, finished: int, dead_reasons: Iterable[str]) -> Trip | None:
        """Events finished in one sink write and the reasons of its dead letters; returns
        the trip if this observation trips the budget."""
        now = self.clock()
        dead = Counter(r for r in dead_reasons if r in MODEL_SIDE_REASONS)
        self._seen.append((now, finished, dead))
        self._finished += finished
        self._dead.update(dead)
        while self._seen and now - self._seen[0][0] > self.window_s:
            _, old_finished, old_dead = self._seen.popleft()
            self._finished -= old_finished
            self._dead.subtract(old_dead)
        if self.holding or self._finished < self.min_events or not self._dead:
            return None
        reason, count = max(self._dead.items(), key=lambda kv: kv[1])
        share = count / self._finished
        if share <= self.max_share:
            return None
        if now - self._last_trip > self.window_s + self._next_hold_s:
            self._next_hold_s = self.hold_s  # a trip long after the last: start over
        trip = Trip(reason, share, self._finished, self._next_hold_s)
        self.held_until = now + self._next_hold_s
        self._last_trip = now
        self._next_hold_s = min(self._next_hold_s * 2, self.max_hold_s)
        self.trips += 1
        self._seen.clear()  # judge afresh after the hold
        self._finished = 0
        self._dead.clear()
        return trip
