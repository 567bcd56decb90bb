"""Beside the dataflow: what every batch outcome feeds and two supervised loops act on.

    outcome ─► latency metrics ─► adaptive controller ─(tick)─► batch size, window, in flight
                               └► lane guard ─(tick)─► rations of the lanes below a protected one

It owns the lane scheduler (whose in-flight limit the controller sets) and answers the
graph's questions for the current batch size and window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from pipeline import wiring
from pipeline.control.adaptive import AdaptiveController
from pipeline.control.lane_guard import LaneGuard
from pipeline.control.lanes import LaneScheduler
from pipeline.events import BatchOutcome
from pipeline.metrics import Metrics
from pipeline.ticks import every
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)
Loop = Callable[[asyncio.Event], Awaitable[None]]


class ControlLoops:
    def __init__(self, topology: Topology, metrics: Metrics) -> None:
        self.metrics = metrics
        self.fixed = wiring.fixed_knobs(topology)
        self.interval_s = wiring.control_interval_s(topology)
        bounds = wiring.adaptive_bounds(topology)
        self.controller = AdaptiveController(bounds) if bounds is not None else None
        self.guard = LaneGuard(wiring.guarded_lanes(topology))
        self.lanes = LaneScheduler(wiring.lane_specs(topology), self.in_flight_limit)
        if self.guard.active:
            self._apply_rations(self.guard.rates)  # a flood at start meets its floor at once

    def in_flight_limit(self) -> int:
        return self.controller.in_flight() if self.controller else self.fixed.in_flight

    def window_ms(self) -> int:
        return self.controller.window_ms() if self.controller else self.fixed.window_ms

    def batch_size(self) -> int:
        return self.controller.batch_size() if self.controller else self.fixed.batch_size

    def loops(self) -> dict[str, Loop]:
        loops: dict[str, Loop] = {}
        if self.controller is not None:
            loops["adaptive"] = self._control_loop  # latency → batch size, window, in flight
        if self.guard.active:
            loops["lane_guard"] = self._guard_loop  # a protected lane's p99 → rations below it
        return loops

    def observe(self, outcome: BatchOutcome) -> None:
        batch = outcome.batch
        latency_ms = outcome.completed_ms - batch.window_start_ms
        self.metrics.batch_latency.labels(batch.lane).observe(latency_ms / 1000.0)
        answers = outcome.answers
        if answers:  # from each row's first event's Kafka timestamp, the batch at once
            stamps = (row.events[0].source.timestamp_ms for row, _ in answers)
            first = np.fromiter(stamps, dtype=np.float64, count=len(answers))
            self.metrics.end_to_end.observe_many((outcome.completed_ms - first) / 1000.0)
        if self.controller is not None and not self.lanes.rationed(batch.lane):
            # A rationed lane's waits are the guard's doing, not a shortage of capacity.
            self.controller.observe(
                latency_ms,
                outcome.completed_ms - outcome.dispatched_ms,
                outcome.dispatched_ms - batch.window_end_ms,
            )
        if self.guard.active and batch.requests:
            # from the oldest event's Kafka timestamp: broker and fetch time count too
            oldest = min(row.events[0].source.timestamp_ms for row in batch.requests)
            self.guard.observe(batch.lane, outcome.completed_ms - oldest, len(batch.requests))

    async def _guard_loop(self, stop: asyncio.Event) -> None:
        async for _ in every(self.interval_s, stop):
            before = (self.lanes.rates(), self.guard.last_reason)
            self._apply_rations(self.guard.tick(self.interval_s, self.lanes.idle()))
            if (self.lanes.rates(), self.guard.last_reason) != before:
                log.info("lane guard: %s -> %s", self.guard.last_reason, self.lanes.rates())

    def _apply_rations(self, rates: dict[str, float | None]) -> None:
        for lane, rate in rates.items():
            self.lanes.set_rate(lane, rate)
            if rate is not None:
                self.metrics.lane_rate.labels(lane).set(rate)
            else:
                with contextlib.suppress(KeyError):  # no series: not rationed
                    self.metrics.lane_rate.remove(lane)

    async def _control_loop(self, stop: asyncio.Event) -> None:
        controller = self.controller
        assert controller is not None
        async for _ in every(self.interval_s, stop):
            before = controller.knobs
            knobs = controller.tick(self.lanes.queued_unrationed)
            if knobs != before:
                log.info(
                    "adaptive: %s -> batch %d, window %d ms, in flight %d",
                    controller.last_reason,
                    knobs.batch_size,
                    knobs.window_ms,
                    knobs.in_flight,
                )
            self.metrics.knobs.labels("batch_size").set(knobs.batch_size)
            self.metrics.knobs.labels("window_seconds").set(knobs.window_ms / 1000.0)
            self.metrics.knobs.labels("in_flight").set(knobs.in_flight)
