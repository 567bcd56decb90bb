"""Adaptive batching and concurrency (plain data, no I/O).

Every control interval the controller reads three signals: the p99 inference time (a batch
sent → its answer: Triton's queue and compute), the p99 batch latency (window opened →
answer), and the number of batches waiting for an inference slot. It moves three knobs
within the topology's bounds, the way Clipper's AIMD does for batch size:

- inference p99 over its budget (a fixed share of the target): Triton is
  given too much at once, so in-flight backs off fast (multiplicative), then batch size.
  While batches wait, in-flight stays at 2 or more: with one request at a time Triton idles
  for every round trip, and that lost capacity only lengthens the wait (docs/benchmarks.md:
  at in-flight 1 the pipeline fell behind for good well below its maximum rate);
- else, batches waiting for a slot: capacity is short, so batch size and the window grow,
  in-flight too while inference has ample headroom, or once the batch size is at its
  maximum (concurrency is then the only capacity left). By a step (additive) when a queue
  is only seen at the tick; by a factor when batches waited long for a slot during the
  interval (a load step, which additive growth is too slow to follow);
- else, batch latency over the target: the time goes into waiting for windows to close, so
  the window shrinks fast;
- else: nothing to fix, nothing changes.

Shrinking on end-to-end latency alone would be wrong: under load most of it is queueing, and
smaller batches would cut capacity and feed the queue until throughput collapses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHRINK = 0.6  # multiplicative decrease
QUEUE_WAIT_SHARE = 0.1  # batches waiting longer than this share of the target: capacity short
INFERENCE_SHARE = 0.5  # share of the latency target that inference may take
HEADROOM = 0.5  # in-flight grows only while inference p99 stays under this share of its budget
GROW = 1.25  # multiplicative increase of batch size and window after long waits for a slot
PIPELINED = 2  # requests in flight that keep Triton busy across a round trip


@dataclass(frozen=True)
class AdaptiveBounds:
    """The adaptive section's bounds (defaults: the schema's, through wiring)."""

    target_p99_ms: float
    min_batch: int
    max_batch: int
    min_in_flight: int
    max_in_flight: int
    min_window_ms: int
    max_window_ms: int
    batch_step: int = 8  # batch sizes move in steps of this many rows


@dataclass(frozen=True)
class Knobs:
    batch_size: int
    window_ms: int
    in_flight: int


class AdaptiveController:
    def __init__(self, bounds: AdaptiveBounds, start: Knobs | None = None) -> None:
        self.bounds = bounds
        self.knobs = start or Knobs(
            min(bounds.max_batch, max(bounds.min_batch, 32)),
            min(bounds.max_window_ms, max(bounds.min_window_ms, 5)),
            min(bounds.max_in_flight, max(bounds.min_in_flight, 2)),
        )
        self._batch_ms: list[float] = []
        self._inference_ms: list[float] = []
        self._queued_ms: list[float] = []
        self.last_reason = "start"

    # Accessors read by the operators on every window and batch.
    def batch_size(self) -> int:
        return self.knobs.batch_size

    def window_ms(self) -> int:
        return self.knobs.window_ms

    def in_flight(self) -> int:
        return self.knobs.in_flight

    def observe(self, batch_ms: float, inference_ms: float, queued_ms: float = 0.0) -> None:
        """One batch: window open → answer, dispatch → answer, window closed → dispatch."""
        self._batch_ms.append(batch_ms)
        self._inference_ms.append(inference_ms)
        self._queued_ms.append(queued_ms)

    def tick(self, queue_depth: int) -> Knobs:
        """One control step; returns the knobs now in force."""
        b, k = self.bounds, self.knobs
        if not self._batch_ms:
            return self.knobs  # nothing came back: no evidence either way
        batch_p99 = float(np.percentile(self._batch_ms, 99))
        inference_p99 = float(np.percentile(self._inference_ms, 99))
        # Batches that waited for a slot during the interval say "capacity is short" more
        # reliably than the queue depth at the instant of the tick.
        waited = float(np.percentile(self._queued_ms, 90)) > QUEUE_WAIT_SHARE * b.target_p99_ms
        waiting = queue_depth > 0 or waited
        self._batch_ms.clear()
        self._inference_ms.clear()
        self._queued_ms.clear()
        # A fixed share of the target: tying it to the window (which grows under load)
        # would shrink the budget until batch and in-flight sat at their floors for good.
        budget = INFERENCE_SHARE * b.target_p99_ms
        if inference_p99 > budget:
            # Triton is given too much at once. Fewer requests in parallel first (that is
            # queueing in Triton); smaller batches only once in-flight is at its floor.
            self.last_reason = "inference over budget"
            floor = max(b.min_in_flight, min(PIPELINED, b.max_in_flight)) if waiting else b.min_in_flight
            if k.in_flight > floor:
                self.knobs = Knobs(k.batch_size, k.window_ms, max(floor, int(k.in_flight * SHRINK)))
            elif k.in_flight < floor:  # work waits behind one request at a time
                self.knobs = Knobs(k.batch_size, k.window_ms, floor)
            elif not waiting:
                self.knobs = Knobs(max(b.min_batch, int(k.batch_size * SHRINK)), k.window_ms, k.in_flight)
            # else: work is waiting and the target is out of reach at this load; smaller
            # batches would only cut capacity, so the batch size holds.
        elif waiting:
            # Capacity is short: bigger batches carry more events per request; another
            # request in parallel only while inference has ample headroom.
            self.last_reason = "batches waiting"
            more_in_flight = inference_p99 < budget * HEADROOM or k.batch_size >= b.max_batch
            batch, window = k.batch_size + b.batch_step, k.window_ms + 1
            if waited:
                batch, window = max(batch, int(k.batch_size * GROW)), max(window, int(k.window_ms * GROW))
            self.knobs = Knobs(
                min(b.max_batch, batch),
                min(b.max_window_ms, window),
                min(b.max_in_flight, k.in_flight + 1) if more_in_flight else k.in_flight,
            )
        elif batch_p99 > b.target_p99_ms:
            self.last_reason = "window too long"
            self.knobs = Knobs(k.batch_size, max(b.min_window_ms, int(k.window_ms * SHRINK)), k.in_flight)
        else:
            self.last_reason = "holding"
        return self.knobs
