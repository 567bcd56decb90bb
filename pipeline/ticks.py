"""The rhythm of the background loops (commits, the watchdog, the controllers), and their
supervision: none of them may die without a word, nor stop making rounds unseen (their
``Rounds``, which liveness reads: pipeline/health.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pipeline.errors import Fatal


class Rounds:
    """A supervised loop's pulse: whether it ended, and, once ``every`` paces it, its interval
    and when its last round ended. A loop paced otherwise (its own waits) is only known to be
    alive or ended."""

    def __init__(self, name: str, on_paced: Callable[[Rounds], None] | None = None) -> None:
        self.name = name
        self.interval_s: float | None = None
        self.last_round = time.monotonic()
        self.ended = False
        self.task: asyncio.Task[Any] | None = None  # the supervised task: only its ``every`` paces
        self._on_paced = on_paced  # told once, when the interval is first known

    def paced(self, interval_s: float) -> None:
        first = self.interval_s is None
        self.interval_s = interval_s
        self.last_round = time.monotonic()  # a (re)started loop has its interval to round
        if first and self._on_paced is not None:
            self._on_paced(self)

    def round_done(self) -> None:
        self.last_round = time.monotonic()


# The loops keep one signature (``stop`` in, nothing out) across the modules that own them:
# ``supervised`` hands each its Rounds through the task's context instead, and ``every``
# finds it there.
_rounds: ContextVar[Rounds | None] = ContextVar("pipeline_loop_rounds", default=None)


def _own_rounds() -> Rounds | None:
    """The Rounds of the supervised loop running in this very task (a task it spawned
    inherits the context, not the loop's pulse)."""
    rounds = _rounds.get()
    return rounds if rounds is not None and rounds.task is asyncio.current_task() else None


# A fault only tests/faults/test_liveness.py makes: no real fault hangs a supervised loop (an
# error restarts it; a broker that stops answering bounds its round), so
# PIPELINE_FAULT_HANG_LOOP="name:path" hangs loop `name` at its first round after `path`
# exists. Unset (outside that test, always), nothing changes.
_HANG_LOOP = os.environ.get("PIPELINE_FAULT_HANG_LOOP", "")


def _hang_now(rounds: Rounds) -> bool:
    name, _, trigger = _HANG_LOOP.partition(":")
    return name == rounds.name and Path(trigger).exists()


async def every(interval_s: float, stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield every ``interval_s`` until ``stop`` is set, and once more right after it is, so
    a loop does its last round (a final commit, say) before it ends. Under ``supervised``,
    each round the loop completes is noted in its Rounds."""
    rounds = _own_rounds()
    if rounds is not None:
        rounds.paced(interval_s)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        yield
        if rounds is not None:
            rounds.round_done()
            if _HANG_LOOP and _hang_now(rounds):
                await asyncio.Event().wait()  # the fault: hung for good


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    on_restart: Callable[[str, BaseException], None],
    on_give_up: Callable[[BaseException], None],
    max_restarts: int = 5,
    window_s: float = 60.0,
    pause_s: float = 1.0,
    rounds: Rounds | None = None,
) -> None:
    """Run a background loop until ``stop``. An exception restarts it after ``pause_s``
    (``on_restart`` logs and counts it); more than ``max_restarts`` within ``window_s``
    calls ``on_give_up``, which stops the pipeline so that its supervisor restarts the
    process: a loop that keeps failing is not retried in place for ever. A Fatal error
    gives up at once: retrying it would only repeat it. ``rounds``: the loop's pulse, marked
    ended when this returns (a loop that returned before ``stop`` is dead: liveness says so)."""
    token = None
    if rounds is not None:
        rounds.task = asyncio.current_task()
        token = _rounds.set(rounds)
    try:
        await _supervise(name, loop, stop, on_restart, on_give_up, max_restarts, window_s, pause_s)
    finally:
        if rounds is not None and token is not None:
            rounds.ended = True
            _rounds.reset(token)


async def _supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    on_restart: Callable[[str, BaseException], None],
    on_give_up: Callable[[BaseException], None],
    max_restarts: int,
    window_s: float,
    pause_s: float,
) -> None:
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
