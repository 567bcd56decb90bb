"""LaneScheduler: weighted shares, per-lane budgets, aging and idle levelling, on a fake clock.

The simulated dispatcher keeps every lane backlogged, fills every free slot, then completes
the oldest batch in flight and advances the clock by one step (1 ms): one dispatch a step."""

from __future__ import annotations

import itertools
from collections import Counter, deque

import pytest

from pipeline.control.lanes import LaneScheduler
from pipeline.events import InferenceBatch
from pipeline.testing import ManualClock
from pipeline.testing.builders import distinct_batch, lane_spec


class Sim:
    """A dispatcher that completes the oldest in-flight batch each step."""

    def __init__(self, sched: LaneScheduler, clock: ManualClock) -> None:
        self.sched = sched
        self.clock = clock
        self.in_flight: deque[InferenceBatch] = deque()
        self.order: list[str] = []
        self.pushed_at: dict[int, int] = {}
        self.waits: dict[str, list[int]] = {}
        self.max_lane_in_flight: Counter[str] = Counter()
        self.max_total_in_flight = 0

    def push(self, lane: str) -> None:
        batch = distinct_batch(lane)
        self.pushed_at[batch.window_start_ms] = self.clock.ms
        self.sched.push(batch)

    def fill(self, refill: set[str] | None = None) -> list[InferenceBatch]:
        """Dispatch until the scheduler says no; a lane in ``refill`` is topped up at once."""
        out = []
        while (batch := self.sched.pop()) is not None:
            out.append(batch)
            self.in_flight.append(batch)
            self.order.append(batch.lane)
            wait = self.clock.ms - self.pushed_at.pop(batch.window_start_ms)
            self.waits.setdefault(batch.lane, []).append(wait)
            lanes_now = Counter(b.lane for b in self.in_flight)
            for lane, n in lanes_now.items():
                self.max_lane_in_flight[lane] = max(self.max_lane_in_flight[lane], n)
            self.max_total_in_flight = max(self.max_total_in_flight, len(self.in_flight))
            if refill and batch.lane in refill:
                self.push(batch.lane)
        return out

    def complete_oldest(self) -> None:
        self.sched.done(self.in_flight.popleft().lane)

    def step(self, refill: set[str] | None = None) -> None:
        self.fill(refill)
        self.complete_oldest()
        self.clock.advance(1)


def backlogged(sim: Sim, lanes: list[str], depth: int = 2) -> set[str]:
    for lane in lanes:
        for _ in range(depth):
            sim.push(lane)
    return set(lanes)


def longest_run(order: list[str], lane: str) -> int:
    return max((len(list(g)) for k, g in itertools.groupby(order) if k == lane), default=0)


# -- (a) weighted shares -------------------------------------------------------------------


def test_backlogged_lanes_share_dispatches_by_weight():
    clock = ManualClock()
    specs = [lane_spec("gold", weight=6), lane_spec("silver", weight=3), lane_spec("bronze", weight=1)]
    sim = Sim(LaneScheduler(specs, lambda: 4, clock), clock)
    refill = backlogged(sim, ["gold", "silver", "bronze"])
    while len(sim.order) < 10_000:
        sim.step(refill)

    counts = Counter(sim.order)
    total = sum(counts.values())
    shares = {lane: counts[lane] / total for lane in ("gold", "silver", "bronze")}
    assert shares["gold"] == pytest.approx(0.6, abs=0.03)
    assert shares["silver"] == pytest.approx(0.3, abs=0.03)
    assert shares["bronze"] == pytest.approx(0.1, abs=0.03)
    assert sim.max_total_in_flight == 4
    # Stride scheduling interleaves: the lightest lane gets a turn about every 10 dispatches
    # (its batches are queued two deep, so each waits about two turns), never in long gaps.
    assert max(sim.waits["bronze"]) <= 25


def test_shares_follow_weights_in_short_windows_too():
    clock = ManualClock()
    specs = [lane_spec("a", weight=3), lane_spec("b", weight=1)]
    sim = Sim(LaneScheduler(specs, lambda: 1, clock), clock)
    refill = backlogged(sim, ["a", "b"])
    for _ in range(400):
        sim.step(refill)
    for start in range(0, 400, 40):
        chunk = Counter(sim.order[start : start + 40])
        assert chunk["a"] == pytest.approx(30, abs=2), (start, chunk)


# -- (b) per-lane in-flight budget ---------------------------------------------------------


def test_a_flooded_lane_never_exceeds_its_own_budget_and_others_still_get_slots():
    clock = ManualClock()
    specs = [
        lane_spec("flood", weight=100, max_in_flight=2),
        lane_spec("other", weight=1, max_in_flight=8),
    ]
    sched = LaneScheduler(specs, lambda: 6, clock)
    sim = Sim(sched, clock)
    for _ in range(500):
        sim.push("flood")
    refill = backlogged(sim, ["other"])

    first = sim.fill(refill)
    assert Counter(b.lane for b in first) == {"flood": 2, "other": 4}
    for _ in range(300):
        sim.step(refill)
        assert sched.lanes["flood"].in_flight <= 2

    assert sim.max_lane_in_flight["flood"] == 2  # it was flooding: at its budget
    assert sim.max_total_in_flight == 6
    # Despite weight 100 to 1, the flood is held to 2 of the 6 slots.
    assert Counter(sim.order)["other"] > Counter(sim.order)["flood"]
    assert sched.queued >= 500 - Counter(sim.order)["flood"]


def test_a_lane_at_its_budget_does_not_block_the_global_pool():
    clock = ManualClock()
    sched = LaneScheduler(
        [lane_spec("x", max_in_flight=1), lane_spec("y", max_in_flight=1)], lambda: 10, clock
    )
    for lane in "xxxyyy":
        sched.push(distinct_batch(lane))
    popped = [sched.pop(), sched.pop(), sched.pop()]
    assert sorted(b.lane for b in popped[:2]) == ["x", "y"]
    assert popped[2] is None  # both lanes at their budget, although 8 global slots are free
    sched.done("x")
    nxt = sched.pop()
    assert nxt is not None and nxt.lane == "x"


# -- (c) starvation bound (aging) ----------------------------------------------------------


def test_low_weight_lane_waits_no_longer_than_its_max_wait():
    clock = ManualClock()
    specs = [lane_spec("hi", weight=100), lane_spec("lo", weight=1, max_wait_ms=50)]
    sim = Sim(LaneScheduler(specs, lambda: 2, clock), clock)
    refill = backlogged(sim, ["hi", "lo"], depth=1)
    for _ in range(3_000):
        sim.step(refill)

    lo_waits = sim.waits["lo"]
    # By weight alone "lo" would get one slot in 101 (a wait of ~100 ms); aging caps it.
    assert max(lo_waits) <= 50 + 1
    assert max(lo_waits) >= 45  # the bound is what released it, not its weight
    assert len(lo_waits) >= 3_000 // 52
    assert max(sim.waits["hi"]) <= 2


def test_an_overdue_lane_goes_first_whatever_its_pass():
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("hi", weight=1_000), lane_spec("lo", max_wait_ms=10)], lambda: 1, clock)
    sched.push(distinct_batch("lo"))
    sched.done(sched.pop().lane)  # "lo" ran once: its pass is 1, "hi" advances by 0.001
    for _ in range(5):
        sched.push(distinct_batch("hi"))
    sched.push(distinct_batch("lo"))  # "hi" is busy, so "lo" keeps its pass, far ahead
    clock.advance(9)
    nxt = sched.pop()
    assert nxt.lane == "hi"  # 9 ms: not yet overdue
    sched.done(nxt.lane)
    clock.advance(1)
    nxt = sched.pop()
    assert nxt.lane == "lo"  # 10 ms: overdue, first despite its pass


# -- (d) idle lanes are levelled -----------------------------------------------------------


def test_a_lane_returning_from_idle_gets_its_share_not_a_burst():
    clock = ManualClock()
    sim = Sim(LaneScheduler([lane_spec("a"), lane_spec("b")], lambda: 4, clock), clock)
    refill = backlogged(sim, ["a"])
    while len(sim.order) < 1_000:
        sim.step(refill)
    assert set(sim.order) == {"a"}

    refill = refill | backlogged(sim, ["b"])  # "b" returns while "a" is busy
    start = len(sim.order)
    while len(sim.order) < start + 200:
        sim.step(refill)
    after = sim.order[start : start + 200]
    assert Counter(after)["b"] == pytest.approx(100, abs=4)
    assert longest_run(after, "b") <= 2
    assert longest_run(after, "a") <= 2


def test_a_lane_returning_while_everything_is_idle_gets_no_burst_either():
    """At light load every batch finishes before the next arrives, so the scheduler is
    often completely idle. "b" idles while "a" runs 1,000 dispatches; then a window brings
    a backlog for both, "b"'s batches happening to be pushed first. With equal weights "b"
    should get about half of what follows, not hundreds of dispatches in a row."""
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("a"), lane_spec("b")], lambda: 1, clock)
    for _ in range(1_000):
        sched.push(distinct_batch("a"))
        sched.done(sched.pop().lane)
        clock.advance(1)

    for _ in range(200):
        sched.push(distinct_batch("b"))
    for _ in range(200):
        sched.push(distinct_batch("a"))
    order = []
    for _ in range(100):
        batch = sched.pop()
        order.append(batch.lane)
        sched.done(batch.lane)

    assert Counter(order)["b"] == pytest.approx(50, abs=5), "".join(order)
    assert longest_run(order, "b") <= 2


# -- (e) global limit, unknown lanes, waits ------------------------------------------------


def test_pop_returns_none_at_the_global_limit_and_the_limit_is_read_live():
    clock = ManualClock()
    limit = [2]
    sched = LaneScheduler([lane_spec("a"), lane_spec("b")], lambda: limit[0], clock)
    for lane in "ababab":
        sched.push(distinct_batch(lane))

    assert sched.pop() is not None
    assert sched.pop() is not None
    assert sched.pop() is None
    assert sched.in_flight == 2

    limit[0] = 3  # the controller raised it
    assert sched.pop() is not None
    assert sched.pop() is None
    assert sched.in_flight == 3

    limit[0] = 1  # lowered below what is in flight: nothing new until it drains
    sched.done("a")
    assert sched.pop() is None
    sched.done("b")
    assert sched.pop() is None
    sched.done("a")
    assert sched.in_flight == 0
    assert sched.pop() is not None
    assert sched.pop() is None
    assert sched.queued == 2


def test_pop_on_empty_queues_returns_none():
    sched = LaneScheduler([lane_spec("a")], lambda: 4, ManualClock())
    assert sched.pop() is None
    assert sched.in_flight == 0


def test_unknown_lane_goes_to_the_last_lane():
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("first"), lane_spec("mid"), lane_spec("last")], lambda: 4, clock)
    stray = distinct_batch("no-such-lane")
    sched.push(stray)
    assert len(sched.lanes["last"].queue) == 1
    assert sched.queued == 1
    assert sched.pop() is stray
    assert sched.lanes["last"].in_flight == 1
    sched.done("no-such-lane")
    assert sched.lanes["last"].in_flight == 0
    assert sched.in_flight == 0


def test_waits_ms_reports_each_lanes_oldest_batch():
    clock = ManualClock()
    sched = LaneScheduler([lane_spec("a"), lane_spec("b"), lane_spec("c")], lambda: 0, clock)
    sched.push(distinct_batch("a"))
    clock.advance(10)
    sched.push(distinct_batch("a"))
    sched.push(distinct_batch("b"))
    clock.advance(15)
    waits = sched.waits_ms()
    assert waits == {"a": pytest.approx(25.0), "b": pytest.approx(15.0), "c": 0.0}


def test_at_least_one_lane_is_required():
    with pytest.raises(ValueError, match="at least one lane"):
        LaneScheduler([], lambda: 1)
