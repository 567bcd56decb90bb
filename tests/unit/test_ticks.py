"""every: a round per interval, and one last round once stop is set."""

from __future__ import annotations

import asyncio

from pipeline.ticks import every


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
