"""window: tumbling windows over batches of events, bounded by time and by count.

A window opens with its first event and closes when it holds ``max_events`` or when
``max_ms`` have passed since it opened, whichever comes first: it never waits past its
time bound. Input and output are batches (lists), so the per-event cost is one list extend.
All timing goes through the given scheduler: virtual time in tests, the asyncio loop in
production (one thread, so no buffer race)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable

from pipeline.events import Event, Window
from pipeline.operators._bounds import as_bound


def _ms(scheduler: abc.SchedulerBase) -> int:
    return int(scheduler.now.timestamp() * 1000)


def window(
    max_ms: int | Callable[[], int], max_events: int, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[list[Event]]], Observable[Window]]:
    """``max_ms`` may be a function (read when a window opens): the adaptive controller
    moves it."""
    time_bound = as_bound(max_ms, "window bounds")
    if max_events <= 0:
        raise ValueError("window bounds must be positive")

    def _window(source: Observable[list[Event]]) -> Observable[Window]:
        def subscribe(
            observer: abc.ObserverBase[Window], default: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            sched = scheduler or default
            if sched is None:
                raise ValueError("window needs a scheduler")
            buffer: list[Event] = []
            opened_ms = 0
            generation = 0  # a timer from a window already closed must do nothing
            timer = SerialDisposable()

            def emit(events: list[Event]) -> None:
                observer.on_next(Window(tuple(events), opened_ms, _ms(sched)))

            def open_window() -> None:
                nonlocal opened_ms, generation
                generation += 1
                opened_ms = _ms(sched)
                mine = generation

                def on_timer(_: abc.SchedulerBase, __: Any = None) -> None:
                    nonlocal buffer
                    if mine == generation and buffer:
                        closed, buffer = buffer, []
                        try:
                            emit(closed)
                        except Exception as exc:  # raised downstream: on a timer it would vanish
                            observer.on_error(exc)

                bound = timedelta(milliseconds=max(1, time_bound()))
                timer.disposable = sched.schedule_relative(bound, on_timer)

            def on_next(events: list[Event]) -> None:
                nonlocal buffer, generation
                if not events:
                    return
                if not buffer:
                    open_window()
                buffer.extend(events)
                while len(buffer) >= max_events:
                    full, buffer = buffer[:max_events], buffer[max_events:]
                    emit(full)
                    if buffer:
                        open_window()
                    else:
                        generation += 1
                        timer.disposable = None  # type: ignore[assignment]

            def on_completed() -> None:
                nonlocal buffer
                if buffer:
                    rest, buffer = buffer, []
                    emit(rest)
                observer.on_completed()

            subscription = source.subscribe(on_next, observer.on_error, on_completed, scheduler=default)
            return CompositeDisposable(subscription, timer)

        return reactivex.create(subscribe)

    return _window
