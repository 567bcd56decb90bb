"""infer: batches → outcomes through a LaneScheduler, with a fake asynchronous infer.

Each test runs on an event loop of its own (pytest-asyncio, function scope); the fake infer
either finishes after a few loop turns or waits on an asyncio.Event the test sets, so the
order of dispatches and completions is under the test's control."""

from __future__ import annotations

import asyncio
import random

import pytest
from reactivex.subject import Subject

from pipeline.control.lanes import LaneScheduler
from pipeline.events import BatchOutcome, InferenceBatch
from pipeline.operators.infer import infer as infer_operator
from pipeline.testing.builders import distinct_batch, lane_spec


async def settle(turns: int = 10) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


class FakeInfer:
    """Records what was dispatched and how many ran at once. A gated batch runs until the
    test opens its gate; otherwise it finishes after ``turns`` loop turns."""

    def __init__(self, lanes: LaneScheduler, gated: bool = False, turns=lambda: 1) -> None:
        self.lanes = lanes
        self.gated = gated
        self.turns = turns
        self.gates: dict[int, asyncio.Event] = {}
        self.started: list[InferenceBatch] = []
        self.running = 0
        self.max_running = 0
        self.max_scheduler_in_flight = 0
        self.fail: dict[int, BaseException] = {}

    async def __call__(self, batch: InferenceBatch) -> BatchOutcome:
        self.started.append(batch)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.max_scheduler_in_flight = max(self.max_scheduler_in_flight, self.lanes.in_flight)
        try:
            if self.gated:
                gate = self.gates.setdefault(batch.window_start_ms, asyncio.Event())
                await gate.wait()
            else:
                for _ in range(self.turns()):
                    await asyncio.sleep(0)
            if batch.window_start_ms in self.fail:
                raise self.fail[batch.window_start_ms]
            return BatchOutcome(batch, model_name="fake")
        finally:
            self.running -= 1

    def release(self, batch: InferenceBatch) -> None:
        self.gates.setdefault(batch.window_start_ms, asyncio.Event()).set()


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[BatchOutcome] = []
        self.errors: list[BaseException] = []
        self.completed = False
        self.events: list[str] = []

    def on_next(self, outcome: BatchOutcome) -> None:
        self.outcomes.append(outcome)
        self.events.append("next")

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)
        self.events.append("error")

    def on_completed(self) -> None:
        self.completed = True
        self.events.append("completed")


def wire(infer, lanes: LaneScheduler) -> tuple[Subject, Recorder]:
    subject: Subject = Subject()
    rec = Recorder()
    subject.pipe(infer_operator(infer, lanes)).subscribe(rec.on_next, rec.on_error, rec.on_completed)
    return subject, rec


async def test_never_more_than_max_in_flight_and_an_outcome_for_every_batch():
    rng = random.Random(3)
    lanes = LaneScheduler([lane_spec("a", weight=2), lane_spec("b")], lambda: 3)
    infer = FakeInfer(lanes, turns=lambda: rng.randint(1, 8))
    subject, rec = wire(infer, lanes)
    batches = [distinct_batch(rng.choice("ab")) for _ in range(60)]
    for i, b in enumerate(batches):
        subject.on_next(b)
        if i % 7 == 0:
            await settle(rng.randint(0, 3))
    subject.on_completed()
    for _ in range(500):
        if rec.completed:
            break
        await asyncio.sleep(0)

    assert rec.completed
    assert rec.errors == []
    assert infer.max_running == 3  # reached the limit, never passed it
    assert infer.max_scheduler_in_flight <= 3
    assert sorted(o.batch.window_start_ms for o in rec.outcomes) == sorted(b.window_start_ms for b in batches)
    assert len(rec.outcomes) == len(batches)
    assert lanes.in_flight == 0
    assert lanes.queued == 0


async def test_a_limit_of_one_serialises_dispatch():
    lanes = LaneScheduler([lane_spec("default")], lambda: 1)
    infer = FakeInfer(lanes, gated=True)
    subject, rec = wire(infer, lanes)
    batches = [distinct_batch() for _ in range(4)]
    for b in batches:
        subject.on_next(b)
    await settle()
    for i, b in enumerate(batches):
        assert infer.started == batches[: i + 1]
        infer.release(b)
        await settle()
        assert [o.batch for o in rec.outcomes] == batches[: i + 1]
    assert infer.max_running == 1


async def test_completes_only_after_every_batch_in_flight_has_finished():
    lanes = LaneScheduler([lane_spec("default")], lambda: 2)
    infer = FakeInfer(lanes, gated=True)
    subject, rec = wire(infer, lanes)
    b1, b2, b3 = distinct_batch(), distinct_batch(), distinct_batch()
    for b in (b1, b2, b3):
        subject.on_next(b)
    subject.on_completed()
    await settle()
    assert not rec.completed  # two in flight, one queued

    infer.release(b2)
    await settle()
    assert [o.batch for o in rec.outcomes] == [b2]
    assert not rec.completed  # b3 took b2's slot
    assert infer.started == [b1, b2, b3]

    infer.release(b3)
    await settle()
    assert not rec.completed
    infer.release(b1)
    await settle()
    assert rec.completed
    assert rec.events == ["next", "next", "next", "completed"]
    assert [o.batch for o in rec.outcomes] == [b2, b3, b1]  # completion order


async def test_completes_at_once_when_nothing_is_in_flight():
    lanes = LaneScheduler([lane_spec("default")], lambda: 2)
    subject, rec = wire(FakeInfer(lanes), lanes)
    subject.on_completed()
    assert rec.completed
    assert rec.outcomes == []


async def test_a_freed_slot_goes_to_the_waiting_high_weight_lane():
    lanes = LaneScheduler([lane_spec("hi", weight=10), lane_spec("lo", weight=1)], lambda: 1)
    infer = FakeInfer(lanes, gated=True)
    subject, rec = wire(infer, lanes)
    lo = [distinct_batch("lo") for _ in range(5)]
    hi = [distinct_batch("hi") for _ in range(4)]
    for b in lo:  # lo[0] takes the only slot, lo[1:] queue
        subject.on_next(b)
    await settle()
    for b in hi:  # then high-weight work arrives
        subject.on_next(b)
    await settle()
    assert infer.started == [lo[0]]

    infer.release(lo[0])
    await settle()
    assert infer.started[1] == hi[0]  # queued later than lo[1..], dispatched first

    while len(rec.outcomes) < len(lo) + len(hi):
        infer.release(infer.started[-1])
        await settle()
    order = [b.lane for b in infer.started]
    # At weight 10 to 1, "lo" gets at most one more slot while "hi" has work waiting.
    last_hi = max(i for i, lane in enumerate(order) if lane == "hi")
    assert order[1 : last_hi + 1].count("lo") <= 1
    assert infer.max_running == 1


async def test_an_exception_from_infer_is_propagated_as_on_error():
    lanes = LaneScheduler([lane_spec("default")], lambda: 2)
    infer = FakeInfer(lanes)
    subject, rec = wire(infer, lanes)
    ok, bad = distinct_batch(), distinct_batch()
    boom = RuntimeError("triton exploded")
    infer.fail[bad.window_start_ms] = boom
    subject.on_next(ok)
    subject.on_next(bad)
    await settle()
    assert rec.errors == [boom]
    assert rec.completed is False
    assert [o.batch for o in rec.outcomes] == [ok]
    assert lanes.in_flight == 0  # the failed batch's slot was given back

    subject.on_next(distinct_batch())  # nothing more is delivered after the error
    subject.on_completed()
    await settle()
    assert rec.events == ["next", "error"]


async def test_a_cancelled_inference_emits_nothing_and_gives_its_slot_back():
    """Cancellation means shutting down: no outcome (its events stay unfinished and are
    replayed) and no error."""
    lanes = LaneScheduler([lane_spec("default")], lambda: 1)
    infer = FakeInfer(lanes, gated=True)
    subject, rec = wire(infer, lanes)
    subject.on_next(distinct_batch())
    await settle()
    assert lanes.in_flight == 1
    (task,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    task.cancel()
    await settle()
    assert rec.events == []
    assert lanes.in_flight == 0


async def test_errors_from_upstream_pass_through():
    lanes = LaneScheduler([lane_spec("default")], lambda: 1)
    subject, rec = wire(FakeInfer(lanes), lanes)
    boom = ValueError("broker gone")
    subject.on_error(boom)
    assert rec.errors == [boom]


@pytest.mark.parametrize("limit", [1, 3])
async def test_a_per_lane_budget_holds_under_the_operator(limit):
    lanes = LaneScheduler([lane_spec("flood", weight=50, max_in_flight=limit), lane_spec("x")], lambda: 6)
    infer = FakeInfer(lanes, gated=True)
    subject, rec = wire(infer, lanes)
    for _ in range(20):
        subject.on_next(distinct_batch("flood"))
    for _ in range(3):
        subject.on_next(distinct_batch("x"))
    await settle()
    running = [b.lane for b in infer.started]
    assert running.count("flood") == limit
    assert running.count("x") == 3
    for b in list(infer.started):
        infer.release(b)
    await settle()
    assert len(rec.outcomes) == limit + 3
    assert [b.lane for b in infer.started[limit + 3 :]] == ["flood"] * limit


async def test_a_rationed_lane_is_dispatched_later_without_a_new_event():
    """Only a rationed lane has work and nothing completes in between: the operator's own
    timer brings the next batch out once the lane has tokens again."""
    lanes = LaneScheduler([lane_spec("slow")], lambda: 8)
    lanes.set_rate("slow", 1000.0)  # rows/s; these batches have no rows, so 0 tokens each
    lanes.lanes["slow"].tokens = -20.0  # in debt for 20 ms
    infer = FakeInfer(lanes)
    subject, rec = wire(infer, lanes)
    subject.on_next(distinct_batch("slow"))
    await settle()
    assert infer.started == []
    await asyncio.sleep(0.05)
    await settle()
    assert len(rec.outcomes) == 1
