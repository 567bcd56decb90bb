"""Gauges the runtime's parts answer when scraped: nothing on the hot path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from pipeline.metrics import Metrics, PartitionReading
from pipeline.triton.lifecycle import LifecycleCounts, RequestState


def _count_of(counter: Counter[RequestState], state: RequestState) -> Callable[[], int]:
    return lambda: counter[state]


def watch_runtime(
    metrics: Metrics,
    *,
    budget_holding: Callable[[], bool],
    contract_pending: Callable[[], bool],
    sink_refusing: Callable[[], bool],
    partitions: Callable[[], Iterable[PartitionReading]],
    lifecycle: LifecycleCounts,
    queued: Callable[[], int],
) -> None:
    metrics.dead_letter_hold.set_function(lambda: 1 if budget_holding() else 0)
    metrics.contract_pending.set_function(lambda: 1 if contract_pending() else 0)
    metrics.sink_refusing.set_function(lambda: 1 if sink_refusing() else 0)
    metrics.watch_partitions(partitions)
    for state in RequestState:
        metrics.request_state.labels(state.value).set_function(_count_of(lifecycle.current, state))
        metrics.request_state_entered.watch(state.value, _count_of(lifecycle.entered, state))
    # Batches queue in the lane scheduler (not at the dispatcher), so that is where the
    # request queue's size is read.
    metrics.request_queue_size.set_function(queued)
