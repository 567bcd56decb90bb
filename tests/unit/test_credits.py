"""CreditGate: pause at the high watermark, resume only once back at the low watermark."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.sources.credits import CreditGate


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_exhausted_exactly_at_high_watermark():
    gate = CreditGate(high_watermark=10, low_watermark=4)
    gate.take(9)
    assert not gate.exhausted
    gate.take(1)
    assert gate.exhausted
    gate.take(5)  # a poll may overshoot
    assert gate.exhausted
    assert gate.in_flight == 15
    gate.give_back(6)
    assert not gate.exhausted


def test_wait_for_room_returns_at_once_while_at_or_below_low():
    async def scenario() -> None:
        gate = CreditGate(10, 4)
        await asyncio.wait_for(gate.wait_for_room(), 1)
        gate.take(4)  # exactly low: still room
        await asyncio.wait_for(gate.wait_for_room(), 1)

    asyncio.run(scenario())


def test_wait_for_room_returns_only_at_or_below_low_watermark():
    async def scenario() -> list[int]:
        gate = CreditGate(10, 4)
        gate.take(10)
        assert gate.exhausted
        waiter = asyncio.ensure_future(gate.wait_for_room())
        seen = []
        for n in (3, 2, 1):  # 7, 5, 5-1=4
            await _settle()
            seen.append(gate.in_flight)
            assert not waiter.done(), f"woke at {gate.in_flight} in flight, above low watermark 4"
            gate.give_back(n)
        assert not gate.exhausted  # below high but the waiter needs low
        await asyncio.wait_for(waiter, 1)
        return [*seen, gate.in_flight]

    assert asyncio.run(scenario()) == [10, 7, 5, 4]


def test_taking_again_after_resuming_blocks_again():
    async def scenario() -> None:
        gate = CreditGate(10, 4)
        gate.take(6)
        gate.give_back(6)
        await asyncio.wait_for(gate.wait_for_room(), 1)
        gate.take(5)
        waiter = asyncio.ensure_future(gate.wait_for_room())
        await _settle()
        assert not waiter.done()
        gate.give_back(5)
        await asyncio.wait_for(waiter, 1)
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_several_waiters_all_wake():
    async def scenario() -> None:
        gate = CreditGate(3, 1)
        gate.take(3)
        waiters = [asyncio.ensure_future(gate.wait_for_room()) for _ in range(3)]
        await _settle()
        assert not any(w.done() for w in waiters)
        gate.give_back(2)
        await asyncio.wait_for(asyncio.gather(*waiters), 1)

    asyncio.run(scenario())


def test_giving_back_more_than_taken_raises():
    gate = CreditGate(10, 4)
    gate.take(3)
    gate.give_back(2)
    with pytest.raises(RuntimeError, match="more credits given back than taken"):
        gate.give_back(2)


def test_giving_back_on_a_fresh_gate_raises():
    with pytest.raises(RuntimeError):
        CreditGate(2, 0).give_back(1)


@pytest.mark.parametrize(("high", "low"), [(10, 10), (10, 11), (0, 0), (5, -1)])
def test_watermarks_must_be_ordered(high, low):
    with pytest.raises(ValueError, match="low_watermark"):
        CreditGate(high, low)


def test_smallest_valid_gate():
    gate = CreditGate(1, 0)
    gate.take(1)
    assert gate.exhausted
    gate.give_back(1)
    assert not gate.exhausted
    assert gate.in_flight == 0
