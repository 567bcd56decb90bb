"""every: a round per interval, and one last round once stop is set."""

from __future__ import annotations

import asyncio

from pipeline.ticks import every, supervised


async def test_a_round_per_interval_then_a_last_one_after_stop():
    stop = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        async for _ in every(0.01, stop):
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.055)
    at_stop = rounds
    stop.set()
    await asyncio.wait_for(task, 1)
    assert at_stop >= 3  # ~5 intervals passed; a loaded machine may run fewer rounds
    assert rounds == at_stop + 1  # the wait is cut short by stop, and the round still runs


async def test_no_round_when_stopped_before_the_start():
    stop = asyncio.Event()
    stop.set()
    assert len([_ async for _ in every(0.01, stop)]) == 0


async def test_a_failing_loop_is_restarted_and_its_failures_reported() -> None:
    calls, restarts, gave_up = [], [], []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"failure {len(calls)}")

    await supervised(
        "flaky",
        flaky,
        asyncio.Event(),
        lambda n, e: restarts.append((n, str(e))),
        gave_up.append,
        pause_s=0,
    )
    assert len(calls) == 3
    assert restarts == [("flaky", "failure 1"), ("flaky", "failure 2")]
    assert gave_up == []


async def test_a_loop_that_keeps_failing_stops_the_pipeline() -> None:
    restarts, gave_up = [], []

    async def broken() -> None:
        raise ValueError("always")

    supervising = supervised(
        "broken",
        broken,
        asyncio.Event(),
        lambda n, e: restarts.append(n),
        gave_up.append,
        max_restarts=3,
        pause_s=0,
    )
    await asyncio.wait_for(supervising, 5)
    assert len(restarts) == 3
    assert [str(e) for e in gave_up] == ["always"]
