"""The rhythm of the background loops (commits, the watchdog, the controllers), and their
supervision: none of them may die without a word."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from pipeline.errors import Fatal


async def every(interval_s: float, stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield every ``interval_s`` until ``stop`` is set, and once more right after it is, so
    a loop does its last round (a final commit, say) before it ends."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        yield


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    on_restart: Callable[[str, BaseException], None],
    on_give_up: Callable[[BaseException], None],
    max_restarts: int = 5,
    window_s: float = 60.0,
    pause_s: float = 1.0,
) -> None:
    """Run a background loop until ``stop``. An exception restarts it after ``pause_s``
    (``on_restart`` logs and counts it); more than ``max_restarts`` within ``window_s``
    calls ``on_give_up``, which stops the pipeline so that its supervisor restarts the
    process: a loop that keeps failing is not retried in place for ever. A Fatal error
    gives up at once: retrying it would only repeat it."""
    failures: deque[float] = deque()
    while not stop.is_set():
        try:
            await loop()
            return
        except Fatal as exc:
            on_give_up(exc)
            return
        except Exception as exc:
            now = time.monotonic()
            failures.append(now)
            while now - failures[0] > window_s:
                failures.popleft()
            if len(failures) > max_restarts:
                on_give_up(exc)
                return
            on_restart(name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause_s)
