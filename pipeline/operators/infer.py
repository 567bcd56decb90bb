"""infer: inference batches → outcomes, in lane order, through the asynchronous dispatcher.

Batches queue per lane; a LaneScheduler picks which one takes the next free inference slot
(weights, per-lane in-flight budgets, aging, rations). The scheduler is asked again on every
new batch and every completion; a timer is set only while a rationed lane waits for tokens.
Outcomes arrive in completion order (offsets are tracked per record, so order does not
matter)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from pipeline.control.lanes import LaneScheduler
from pipeline.events import BatchOutcome, InferenceBatch


def infer(
    infer: Callable[[InferenceBatch], Awaitable[BatchOutcome]],
    lanes: LaneScheduler,
) -> Callable[[Observable[InferenceBatch]], Observable[BatchOutcome]]:
    def _infer(source: Observable[InferenceBatch]) -> Observable[BatchOutcome]:
        def subscribe(
            observer: abc.ObserverBase[BatchOutcome], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            completed = False
            timer: asyncio.TimerHandle | None = None

            def finish_if_done() -> None:
                if completed and lanes.in_flight == 0 and lanes.queued == 0:
                    observer.on_completed()

            def on_done(batch: InferenceBatch, task: asyncio.Task[BatchOutcome]) -> None:
                lanes.done(batch.lane)
                if task.cancelled():
                    return  # shutting down: its events stay unfinished and are replayed
                error = task.exception()
                if error is not None:
                    # reactivex types on_error as Exception; a task can also end with
                    # KeyboardInterrupt/SystemExit, passed on as is
                    observer.on_error(error)  # type: ignore[arg-type]
                    return
                observer.on_next(task.result())
                pump()
                finish_if_done()

            def pump() -> None:
                nonlocal timer
                while (batch := lanes.pop()) is not None:
                    task = asyncio.ensure_future(infer(batch))
                    task.add_done_callback(functools.partial(on_done, batch))
                if timer is None and (delay := lanes.retry_in()) is not None:
                    timer = asyncio.get_running_loop().call_later(delay, on_timer)

            def on_timer() -> None:
                nonlocal timer
                timer = None
                try:
                    pump()
                except Exception as exc:  # raised downstream: on a timer it would vanish
                    observer.on_error(exc)

            def on_next(batch: InferenceBatch) -> None:
                lanes.push(batch)
                pump()

            def on_completed() -> None:
                nonlocal completed
                completed = True
                finish_if_done()

            def cancel_timer() -> None:
                if timer is not None:
                    timer.cancel()

            subscription = source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(subscription, Disposable(cancel_timer))

        return reactivex.create(subscribe)

    return _infer
