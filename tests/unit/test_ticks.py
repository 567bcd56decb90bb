"""every: a round per interval, and one last round once stop is set."""

from __future__ import annotations

import asyncio

from pipeline.ticks import every, supervised


def test_a_round_per_interval_then_a_last_one_after_stop():
    async def scenario() -> tuple[int, int]:
        stop = asyncio.Event()
        rounds = 0
        rounds_at_stop = 0

        async def loop() -> None:
            nonlocal rounds
            async for _ in every(0.01, stop):
                rounds += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.055)
        rounds_at_stop = rounds
        stop.set()
        await asyncio.wait_for(task, 1)
        return rounds_at_stop, rounds

    at_stop, total = asyncio.run(scenario())
    assert at_stop >= 3  # ~5 intervals passed; a loaded machine may run fewer rounds
    assert total == at_stop + 1  # the wait is cut short by stop, and the round still runs


def test_no_round_when_stopped_before_the_start():
    async def scenario() -> int:
        stop = asyncio.Event()
        stop.set()
        return len([_ async for _ in every(0.01, stop)])

    assert asyncio.run(scenario()) == 0


def test_a_failing_loop_is_restarted_and_its_failures_reported() -> None:
    calls, restarts, gave_up = [], [], []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"failure {len(calls)}")

    async def scenario() -> None:
        await supervised(
            "flaky",
            flaky,
            asyncio.Event(),
            lambda n, e: restarts.append((n, str(e))),
            gave_up.append,
            pause_s=0,
        )

    asyncio.run(scenario())
    assert len(calls) == 3
    assert restarts == [("flaky", "failure 1"), ("flaky", "failure 2")]
    assert gave_up == []


def test_a_loop_that_keeps_failing_stops_the_pipeline() -> None:
    restarts, gave_up = [], []

    async def broken() -> None:
        raise ValueError("always")

    async def scenario() -> None:
        await supervised(
            "broken",
            broken,
            asyncio.Event(),
            lambda n, e: restarts.append(n),
            gave_up.append,
            max_restarts=3,
            pause_s=0,
        )

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert len(restarts) == 3
    assert [str(e) for e in gave_up] == ["always"]
