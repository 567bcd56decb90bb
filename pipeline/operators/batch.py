"""batch: a window's per-user requests → inference batches of at most ``max_size`` users."""

from __future__ import annotations

from collections.abc import Callable

import reactivex
from reactivex import Observable, abc

from pipeline.events import InferenceBatch, UserRequest, Window


def split_batches(window: Window, requests: list[UserRequest], max_size: int) -> list[InferenceBatch]:
    return [
        InferenceBatch(tuple(requests[i : i + max_size]), window.start_ms, window.end_ms)
        for i in range(0, len(requests), max_size)
    ]


def batch(
    max_size: int,
) -> Callable[[Observable[tuple[Window, list[UserRequest]]]], Observable[InferenceBatch]]:
    if max_size <= 0:
        raise ValueError("max_size must be positive")

    def _batch(source: Observable[tuple[Window, list[UserRequest]]]) -> Observable[InferenceBatch]:
        def subscribe(
            observer: abc.ObserverBase[InferenceBatch], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(item: tuple[Window, list[UserRequest]]) -> None:
                for chunk in split_batches(item[0], item[1], max_size):
                    observer.on_next(chunk)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _batch
