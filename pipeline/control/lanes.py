"""Priority lanes (plain data, no I/O): which batch gets the next inference slot.

Each lane has a weight, an in-flight budget of its own and a maximum wait. Capacity is
shared by weight with stride scheduling (a lane's "pass" advances by 1/weight per dispatch;
the lowest pass goes next), a lane at its own budget is skipped (a flood in one lane cannot
take the slots of another), and a lane whose oldest batch has waited longer than its
bound goes before lanes within theirs (aging), so no lane starves. A lane may also be given a
rate (rows per second, a token bucket): the lane guard rations low lanes this way when a
protected lane misses its latency bound."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.events import InferenceBatch


@dataclass(frozen=True)
class LaneSpec:
    """A lane's share of dispatch (defaults: the schema's, through wiring)."""

    id: str
    weight: float
    max_wait_ms: float
    max_in_flight: int
    priority: int  # Triton request priority (1 is served first; 0: the model's default)


@dataclass
class _Lane:
    spec: LaneSpec
    queue: deque[tuple[float, InferenceBatch]] = field(default_factory=deque)
    in_flight: int = 0
    pass_: float = 0.0
    dispatched: int = 0
    rate: float | None = None  # rows per second; None: no limit
    tokens: float = 0.0
    refilled: float = 0.0

    def refill(self, now: float) -> None:
        if self.rate is not None:
            # A burst of a quarter second at most: a rationed lane cannot save up.
            self.tokens = min(self.rate * 0.25, self.tokens + self.rate * (now - self.refilled))
        self.refilled = now

    def has_tokens(self) -> bool:
        return self.rate is None or self.tokens >= 0


class LaneScheduler:
    def __init__(
        self,
        lanes: Sequence[LaneSpec],
        max_in_flight: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lanes:
            raise ValueError("at least one lane")
        self.lanes = {spec.id: _Lane(spec) for spec in lanes}
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.in_flight = 0
        self.virtual_time = 0.0

    @property
    def queued(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes.values())

    @property
    def queued_unrationed(self) -> int:
        """Batches waiting in lanes without a ration: a rationed lane waits on purpose."""
        return sum(len(lane.queue) for lane in self.lanes.values() if lane.rate is None)

    def idle(self) -> set[str]:
        """Lanes with nothing queued and nothing in flight."""
        return {lane_id for lane_id, lane in self.lanes.items() if not lane.queue and lane.in_flight == 0}

    def rationed(self, lane_id: str) -> bool:
        lane = self.lanes.get(lane_id)
        return lane is not None and lane.rate is not None

    def push(self, batch: InferenceBatch) -> None:
        lane = self.lanes.get(batch.lane) or next(reversed(self.lanes.values()))
        if not lane.queue and lane.in_flight == 0:
            # A lane coming back from idle starts at the scheduler's virtual time (the pass
            # of the last dispatch), not with the credit of all the time it was idle.
            lane.pass_ = max(lane.pass_, self.virtual_time)
        lane.queue.append((self.clock(), batch))

    def pop(self) -> InferenceBatch | None:
        """The next batch to dispatch now, or None if no slot or nothing eligible."""
        if self.in_flight >= self.max_in_flight():
            return None
        now = self.clock()
        for lane in self.lanes.values():
            lane.refill(now)
        eligible = [
            x
            for x in self.lanes.values()
            if x.queue and x.in_flight < x.spec.max_in_flight and x.has_tokens()
        ]
        if not eligible:
            return None
        # Lanes past their wait bound go first; among them (and otherwise) the weighted
        # stride order decides, so a flooded low lane that is always overdue cannot take
        # every slot from a high lane that is overdue too.
        overdue = [x for x in eligible if (now - x.queue[0][0]) * 1000 >= x.spec.max_wait_ms]
        lane = min(overdue or eligible, key=lambda x: x.pass_)
        _, batch = lane.queue.popleft()
        self.virtual_time = lane.pass_
        lane.pass_ += 1.0 / lane.spec.weight
        lane.in_flight += 1
        lane.dispatched += 1
        if lane.rate is not None:
            lane.tokens -= len(batch.requests)  # may go into debt: the next batch waits longer
        self.in_flight += 1
        return batch

    def set_rate(self, lane_id: str, rows_per_s: float | None) -> None:
        lane = self.lanes[lane_id]
        lane.refill(self.clock())
        if lane.rate is None and rows_per_s is not None:
            lane.tokens = 0.0
        lane.rate = rows_per_s

    def rates(self) -> dict[str, float | None]:
        return {lane_id: lane.rate for lane_id, lane in self.lanes.items()}

    def retry_in(self) -> float | None:
        """Seconds until a rationed lane with queued batches has tokens again (None: no lane
        is waiting for tokens), so the dispatcher can come back without a new event."""
        waits = [
            -lane.tokens / lane.rate
            for lane in self.lanes.values()
            if lane.queue and lane.rate and lane.tokens < 0 and lane.in_flight < lane.spec.max_in_flight
        ]
        return max(0.001, min(waits)) if waits else None

    def done(self, lane_id: str) -> None:
        lane = self.lanes.get(lane_id) or next(reversed(self.lanes.values()))
        lane.in_flight -= 1
        self.in_flight -= 1

    def waits_ms(self) -> dict[str, float]:
        """How long each lane's oldest queued batch has waited."""
        now = self.clock()
        return {
            lane_id: (now - lane.queue[0][0]) * 1000 if lane.queue else 0.0
            for lane_id, lane in self.lanes.items()
        }
