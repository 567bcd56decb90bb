"""The lane guard (plain data, no I/O): keeps protected lanes under their latency bound by
rationing the lanes below them.

Weights and in-flight budgets share Triton's slots, but on a small machine a flood costs more
than slots: fetching, parsing, inferring and writing it takes the CPU that the broker and the
live lane need too. So each control interval the guard reads the p99 latency of every lane
(the oldest event's Kafka timestamp → answer) and, AIMD again, moves a rate (rows/s) for the
lanes below a protected one:

- a protected lane over its bound: every lane below it is cut to what it delivered times
  bound/p99 (at most half; never under its floor, so it is never starved);
- every protected lane well within its bound (under GROW_BELOW of it): rationed lanes grow by
  a fixed step, and a ration the lane no longer reaches is lifted;
- in between, or a protected lane with work but no answers: nothing moves (an idle
  protected lane needs no protection, and rations grow past it). The band keeps the
  sawtooth of plain AIMD from crossing the bound on every cycle, which a p99 would show.

Unprotected lanes below a protected lane start rationed at their floor and grow from there:
a flood that arrives all at once would otherwise run unrationed for the first interval. A
protected lane below another one starts free; it is rationed only while the one above it
is over its bound.

A rationed lane's batches wait in its queue; its credits then pause its topics, so the flood
stays in the broker instead of in memory."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

CUT = 0.5  # multiplicative decrease of a rationed lane's rate, at least
GROW_BELOW = 0.8  # rations grow only while every protected p99 is under this share of its bound
LIFT_HEADROOM = 2.0  # a ration this far above what the lane delivers no longer binds


@dataclass(frozen=True)
class GuardedLane:
    """A lane as the guard sees it (defaults: the schema's, through wiring)."""

    id: str
    p99_bound_ms: float | None  # protected when set
    min_rate: float  # rows/s a rationed lane always keeps
    rate_step: float  # rows/s added per interval while the bounds hold


class LaneGuard:
    def __init__(self, lanes: Sequence[GuardedLane]) -> None:
        self.lanes = list(lanes)  # most important first, as in the topology
        protected = [i for i, lane in enumerate(self.lanes) if lane.p99_bound_ms is not None]
        first = protected[0] if protected else len(self.lanes)
        # Worth running: some lane is protected and some lane sits below it. Fixed with the
        # lanes, and read on every outcome, so worked out once.
        self.active = first < len(self.lanes) - 1
        self.rates: dict[str, float | None] = {
            lane.id: lane.min_rate if i > first and lane.p99_bound_ms is None else None
            for i, lane in enumerate(self.lanes)
        }
        self._latency_ms: dict[str, list[float]] = defaultdict(list)
        self._rows: dict[str, int] = defaultdict(int)
        self.last_reason = "start"

    def observe(self, lane: str, latency_ms: float, rows: int) -> None:
        self._latency_ms[lane].append(latency_ms)
        self._rows[lane] += rows

    def tick(self, interval_s: float, idle: Collection[str] = ()) -> dict[str, float | None]:
        """One control step; returns the rate of every lane (None: not rationed). ``idle``:
        lanes with nothing queued or in flight. An idle protected lane needs no protection;
        one with work but no answers in the interval gives no evidence, and nothing moves."""
        p99 = {lane: float(np.percentile(v, 99)) for lane, v in self._latency_ms.items() if v}
        delivered = {lane: rows / interval_s for lane, rows in self._rows.items()}
        self._latency_ms.clear()
        self._rows.clear()
        # how far over its bound each protected lane with answers is (1.0: at the bound)
        load = {
            i: p99[lane.id] / lane.p99_bound_ms
            for i, lane in enumerate(self.lanes)
            if lane.p99_bound_ms is not None and lane.id in p99
        }
        violated = next((i for i, over in load.items() if over > 1.0), None)
        if violated is not None:
            self.last_reason = f"{self.lanes[violated].id} over its bound"
            factor = min(CUT, 1.0 / load[violated])
            for lane in self.lanes[violated + 1 :]:
                current = self.rates[lane.id]
                got = delivered.get(lane.id, 0.0)
                basis = got if current is None else min(current, got)
                self.rates[lane.id] = max(lane.min_rate, basis * factor)
            return dict(self.rates)
        silent = [
            lane.id
            for lane in self.lanes
            if lane.p99_bound_ms is not None and lane.id not in p99 and lane.id not in idle
        ]
        if silent:  # work but no answers: it may be stuck behind the others; hold
            self.last_reason = "no evidence"
            return dict(self.rates)
        if load and max(load.values()) > GROW_BELOW:
            self.last_reason = "near a bound"
            return dict(self.rates)
        self.last_reason = "within bounds"
        for lane in self.lanes:
            current = self.rates[lane.id]
            if current is None:
                continue
            if current > LIFT_HEADROOM * max(delivered.get(lane.id, 0.0), lane.min_rate):
                self.rates[lane.id] = None  # the lane no longer needs what it is allowed
            else:
                self.rates[lane.id] = current + lane.rate_step
        return dict(self.rates)
