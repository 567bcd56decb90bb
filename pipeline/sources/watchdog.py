"""Stall watchdog: the failure users of stream processors report most is a silent stall
(partitions with lag, nothing moving, no error). Every second it compares progress (events
finished) with the work waiting (lag of the assigned partitions plus events in flight); work
waiting and no progress for ``stall_after_s`` is logged loudly and turns readiness false.
It also un-pauses any partition left paused while the credit gate has room."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pipeline.metrics import Metrics
from pipeline.sources import Source
from pipeline.ticks import every

log = logging.getLogger(__name__)


class StallWatchdog:
    def __init__(
        self,
        source: Source,
        progress: Callable[[], int],
        in_flight: Callable[[], int],
        stall_after_s: float,
        metrics: Metrics,
        interval_s: float = 1.0,
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self.held = held  # consumption held on purpose: waiting work is not a stall
        self.source = source
        self.progress = progress
        self.in_flight = in_flight
        self.stall_after_s = stall_after_s
        self.metrics = metrics
        self.interval_s = interval_s
        self.stalled = False
        self._last_progress = progress()
        self._last_change: float | None = None  # set by the first observation

    def check(self, lag: int, now: float) -> bool:
        """One observation; returns whether the pipeline is stalled now."""
        done = self.progress()
        waiting = 0 if self.held() else lag + self.in_flight()
        if self._last_change is None or done != self._last_progress or waiting == 0:
            self._last_progress = done
            self._last_change = now
        stalled = waiting > 0 and now - self._last_change >= self.stall_after_s
        if stalled and not self.stalled:
            log.error(
                "STALLED: %d events waiting (lag %d) and none finished for %.0f s",
                waiting,
                lag,
                now - self._last_change,
            )
        elif self.stalled and not stalled:
            log.warning("stall cleared: events are finishing again")
        self.stalled = stalled
        self.metrics.stalled.set(1 if stalled else 0)
        return stalled

    async def run(self, stop: asyncio.Event) -> None:
        async for _ in every(self.interval_s, stop):
            self.source.resume_if_room()
            self.check(self.source.lag(), time.monotonic())
