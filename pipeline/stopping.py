"""Bounded starts and stops: a start step raced against the stop signal, and closing steps
each given a bound. A broker that is down must not hold the process: aiokafka retries a
commit, a join or a flush for as long as it is let."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

log = logging.getLogger(__name__)
# Each closing step (final commit, consumer, producer, streams) gets at most this long: with
# the source loop's exit they fit in serve.SHUTDOWN_MARGIN_S past the drain.
CLOSE_STEP_TIMEOUT_S = 1.0
Step = tuple[str, Callable[[], Awaitable[None]]]


async def unless_stopped(step: Coroutine[Any, Any, object], stop: asyncio.Event) -> bool:
    """Run a start step until it ends or ``stop`` is set, whichever is first: the broker check
    can take its timeout per bootstrap server, joining the group as long as the broker
    takes, and a SIGTERM meanwhile must end the start at once. False: stopped first (the
    step cancelled); the step's error as it raises it."""
    task = asyncio.create_task(step)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():  # stopped (or the caller cancelled)
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        if stop.is_set():
            return False
        name = getattr(step, "__qualname__", repr(step))
        raise RuntimeError(f"start step {name} ended cancelled, with no stop asked")
    task.result()  # a verdict reached as the stop came still counts (exit 2 over exit 0)
    return True


async def close_each(steps: Sequence[Step], quiet: bool = False) -> bool:
    """Every step, each bounded; a failure is logged (unless ``quiet``: after a failed
    start) and the next step still runs. True if all succeeded."""
    clean = True
    for name, step in steps:
        try:
            await asyncio.wait_for(step(), CLOSE_STEP_TIMEOUT_S)
        except Exception as exc:
            clean = False
            if not quiet:
                log.error("%s failed or timed out after %.0f s: %r", name, CLOSE_STEP_TIMEOUT_S, exc)
    return clean
