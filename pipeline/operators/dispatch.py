"""dispatch: inference batches → outcomes, through the (asynchronous) dispatcher.

Each batch becomes an asyncio task on the pipeline's loop; outcomes arrive in completion
order, not batch order (offsets are tracked per record, so order does not matter)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import reactivex
from reactivex import Observable
from reactivex import operators as ops

from pipeline.events import BatchOutcome, InferenceBatch


def dispatch(
    infer: Callable[[InferenceBatch], Awaitable[BatchOutcome]],
) -> Callable[[Observable[InferenceBatch]], Observable[BatchOutcome]]:
    def start(batch: InferenceBatch) -> Observable[BatchOutcome]:
        return reactivex.from_future(asyncio.ensure_future(infer(batch)))

    return ops.flat_map(start)
