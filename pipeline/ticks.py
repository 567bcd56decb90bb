"""The rhythm of the background loops (commits, the watchdog, the controllers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def every(interval_s: float, stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield every ``interval_s`` until ``stop`` is set, and once more right after it is, so
    a loop does its last round (a final commit, say) before it ends."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        yield
