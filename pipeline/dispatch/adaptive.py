"""Adaptive batching and concurrency (plain data, no I/O).

Every control interval the controller looks at the p99 of the batch latencies it was told
about (window open → outcome: time in the window, queued for a slot, inference) and at the
queue depth, and moves three knobs within the topology's bounds: the batch size, the
window's time bound and the in-flight limit. It grows slowly (additive) while the target
holds with headroom and work is queued, and backs off fast (multiplicative) when the target
is missed: AIMD, as TCP does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROW_BELOW = 0.7  # grow only while p99 is under this share of the target
SHRINK = 0.6  # multiplicative decrease


@dataclass(frozen=True)
class AdaptiveBounds:
    target_p99_ms: float = 50.0
    min_batch: int = 8
    max_batch: int = 256
    min_in_flight: int = 1
    max_in_flight: int = 16
    min_window_ms: int = 2
    max_window_ms: int = 50
    batch_step: int = 8


@dataclass(frozen=True)
class Knobs:
    batch_size: int
    window_ms: int
    in_flight: int


class AdaptiveController:
    def __init__(self, bounds: AdaptiveBounds, start: Knobs | None = None) -> None:
        self.bounds = bounds
        self.knobs = start or Knobs(bounds.min_batch, bounds.min_window_ms, bounds.min_in_flight)
        self._latencies: list[float] = []
        self.last_p99: float | None = None

    # Accessors read by the operators on every window and batch.
    def batch_size(self) -> int:
        return self.knobs.batch_size

    def window_ms(self) -> int:
        return self.knobs.window_ms

    def in_flight(self) -> int:
        return self.knobs.in_flight

    def observe(self, latency_ms: float) -> None:
        self._latencies.append(latency_ms)

    def tick(self, queue_depth: int) -> Knobs:
        """One control step; returns the knobs now in force."""
        if not self._latencies:
            return self.knobs
        p99 = float(np.percentile(self._latencies, 99))
        self._latencies.clear()
        self.last_p99 = p99
        b, k = self.bounds, self.knobs
        if p99 > b.target_p99_ms:
            self.knobs = Knobs(
                max(b.min_batch, int(k.batch_size * SHRINK)),
                max(b.min_window_ms, int(k.window_ms * SHRINK)),
                max(b.min_in_flight, int(k.in_flight * SHRINK)),
            )
        elif p99 < GROW_BELOW * b.target_p99_ms and queue_depth > 0:
            self.knobs = Knobs(
                min(b.max_batch, k.batch_size + b.batch_step),
                min(b.max_window_ms, k.window_ms + 1),
                min(b.max_in_flight, k.in_flight + 1),
            )
        return self.knobs
