"""batch: a window's per-user requests → inference batches of at most ``max_size`` users,
one lane and one experiment arm (a model version: one per request) per batch. ``max_size``
may be a function: the adaptive controller moves it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import reactivex
from reactivex import Observable, abc

from pipeline.events import InferenceBatch, UserRequest, Window
from pipeline.operators._bounds import as_bound

LaneOf = Callable[[UserRequest], tuple[str, int]]
ArmOf = Callable[[list[int]], list[str]]  # user ids → the experiment arm that serves each


def _default_lane(_request: UserRequest) -> tuple[str, int]:
    return "default", 0


def split_batches(
    window: Window,
    requests: list[UserRequest],
    max_size: int,
    lane_of: LaneOf = _default_lane,
    lane_caps: Mapping[str, int] | None = None,
    arm_of: ArmOf | None = None,
) -> list[InferenceBatch]:
    """``lane_caps`` bounds a lane's batches further: Triton runs one batch at a time per
    instance, so a low lane's big batch is what a high lane's request waits behind."""
    groups: list[tuple[str, int, str, list[UserRequest]]]
    if arm_of is None:
        by_lane: dict[tuple[str, int], list[UserRequest]] = {}
        for request in requests:
            by_lane.setdefault(lane_of(request), []).append(request)
        groups = [(lane, priority, "", rows) for (lane, priority), rows in by_lane.items()]
    else:
        by_arm: dict[tuple[str, int], dict[str, list[UserRequest]]] = {}
        arms = arm_of([request.user_id for request in requests])
        for request, arm in zip(requests, arms, strict=True):
            by_arm.setdefault(lane_of(request), {}).setdefault(arm, []).append(request)
        groups = [
            (lane, priority, arm, rows)
            for (lane, priority), per_arm in by_arm.items()
            for arm, rows in per_arm.items()
        ]
    caps = lane_caps or {}
    out: list[InferenceBatch] = []
    for lane, priority, arm, rows in groups:
        size = max(1, min(max_size, caps.get(lane, max_size)))
        out.extend(
            InferenceBatch(tuple(rows[i : i + size]), window.start_ms, window.end_ms, lane, priority, arm)
            for i in range(0, len(rows), size)
        )
    return out


def batch(
    max_size: int | Callable[[], int],
    lane_of: LaneOf = _default_lane,
    lane_caps: Mapping[str, int] | None = None,
    arm_of: ArmOf | None = None,
) -> Callable[[Observable[tuple[Window, list[UserRequest]]]], Observable[InferenceBatch]]:
    size = as_bound(max_size, "max_size")

    def _batch(source: Observable[tuple[Window, list[UserRequest]]]) -> Observable[InferenceBatch]:
        def subscribe(
            observer: abc.ObserverBase[InferenceBatch], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(item: tuple[Window, list[UserRequest]]) -> None:
                for chunk in split_batches(item[0], item[1], max(1, size()), lane_of, lane_caps, arm_of):
                    observer.on_next(chunk)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _batch
