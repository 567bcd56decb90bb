"""CircuitBreaker: opening, the single half-open probe, back-off of the open time.

The breaker reads a fake clock; admit() also polls on a real timer of at most the open time
left (at least 10 ms), so open times are kept to tens of milliseconds and every wait here is
short."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.control.breaker import BreakerState, CircuitBreaker
from pipeline.testing import ManualClock


def breaker_with(
    failure_threshold: int = 5, open_ms: int = 500, max_open_ms: int = 2_000, clock: ManualClock | None = None
) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold, open_ms, max_open_ms, clock or ManualClock())


async def admit_within(breaker: CircuitBreaker, seconds: float = 0.05) -> bool | None:
    """admit()'s answer, or None if it was still waiting after ``seconds`` (real time)."""
    try:
        return await asyncio.wait_for(breaker.admit(), seconds)
    except TimeoutError:
        return None


async def settle(seconds: float = 0.04) -> None:
    await asyncio.sleep(seconds)


async def probing(**limits: int) -> tuple[ManualClock, CircuitBreaker]:
    """A breaker opened by one failure whose open time (20 ms) has passed, and whose probe
    has just been admitted: it is half-open."""
    clock = ManualClock()
    breaker = breaker_with(failure_threshold=1, open_ms=20, clock=clock, **limits)
    breaker.record_failure(probe=False)
    clock.advance(20)
    assert await admit_within(breaker) is True
    return clock, breaker


async def test_closed_breaker_admits_at_once_without_probing():
    breaker = breaker_with(clock=ManualClock())
    assert breaker.is_closed
    for _ in range(3):
        assert await admit_within(breaker, 0.01) is False


def test_opens_after_failure_threshold_consecutive_failures():
    breaker = breaker_with(failure_threshold=3, open_ms=20, clock=ManualClock())
    breaker.record_failure(probe=False)
    breaker.record_failure(probe=False)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.trips == 0
    breaker.record_failure(probe=False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.is_closed
    assert breaker.trips == 1
    breaker.record_failure(probe=False)  # more failures while open: still one trip
    assert breaker.state is BreakerState.OPEN
    assert breaker.trips == 1


def test_server_down_opens_at_once():
    breaker = breaker_with(failure_threshold=5, clock=ManualClock())
    breaker.record_failure(probe=False, server_down=True)
    assert breaker.state is BreakerState.OPEN
    assert breaker.trips == 1


def test_success_resets_the_consecutive_count():
    breaker = breaker_with(failure_threshold=3, clock=ManualClock())
    for _ in range(2):
        breaker.record_failure(probe=False)
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    for _ in range(2):
        breaker.record_failure(probe=False)
    assert breaker.state is BreakerState.CLOSED  # 2 + 2 failures, but never 3 in a row
    breaker.record_failure(probe=False)
    assert breaker.state is BreakerState.OPEN


async def test_admit_waits_while_open_then_lets_one_probe_through_after_open_ms():
    clock = ManualClock()
    breaker = breaker_with(failure_threshold=1, open_ms=20, clock=clock)
    breaker.record_failure(probe=False)

    waiter = asyncio.ensure_future(breaker.admit())
    await settle()
    assert not waiter.done()
    clock.advance(15)
    await settle()
    assert not waiter.done()  # 15 of 20 ms
    clock.advance(5)
    assert await asyncio.wait_for(waiter, 0.5) is True
    assert breaker.state is BreakerState.HALF_OPEN


async def test_only_one_probe_at_a_time():
    clock = ManualClock()
    breaker = breaker_with(failure_threshold=1, open_ms=20, clock=clock)
    breaker.record_failure(probe=False)
    waiters = [asyncio.ensure_future(breaker.admit()) for _ in range(5)]
    clock.advance(25)
    await settle(0.15)  # several polls (every 10-20 ms) for each waiter
    done = [w for w in waiters if w.done()]
    assert [w.result() for w in done] == [True]
    assert await admit_within(breaker, 0.03) is None  # a newcomer waits too
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_probe_success_closes_and_releases_every_waiter():
    _, breaker = await probing()
    waiters = [asyncio.ensure_future(breaker.admit()) for _ in range(4)]
    await settle()
    assert not any(w.done() for w in waiters)

    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    results = await asyncio.wait_for(asyncio.gather(*waiters), 0.5)
    assert results == [False] * 4
    assert breaker.consecutive_failures == 0


async def test_probe_failure_doubles_the_open_time_up_to_max_open_ms():
    clock, breaker = await probing(max_open_ms=70)

    breaker.record_failure(probe=True)  # re-opens for 40 ms, from now
    assert breaker.state is BreakerState.OPEN
    clock.advance(35)
    assert await admit_within(breaker) is None
    clock.advance(6)
    assert await admit_within(breaker) is True

    breaker.record_failure(probe=True)  # 80 ms, capped at 70
    clock.advance(65)
    assert await admit_within(breaker) is None
    clock.advance(6)
    assert await admit_within(breaker) is True

    breaker.record_failure(probe=True)  # still 70
    clock.advance(65)
    assert await admit_within(breaker) is None
    clock.advance(6)
    assert await admit_within(breaker) is True
    assert breaker.trips == 1  # re-opening from half-open is the same outage


async def test_a_successful_probe_resets_the_open_time_for_the_next_outage():
    clock = ManualClock()
    breaker = breaker_with(failure_threshold=1, open_ms=20, max_open_ms=1_000, clock=clock)
    breaker.record_failure(probe=False)
    for _ in range(3):  # 40, 80, 160 ms
        clock.advance(200)
        assert await admit_within(breaker) is True
        breaker.record_failure(probe=True)
    clock.advance(200)
    assert await admit_within(breaker) is True
    breaker.record_success()

    breaker.record_failure(probe=False, server_down=True)  # a new outage
    assert breaker.trips == 2
    clock.advance(21)
    assert await admit_within(breaker) is True  # 20 ms again, not 320


async def test_cancel_probe_lets_the_next_admit_probe():
    _, breaker = await probing()
    waiter = asyncio.ensure_future(breaker.admit())
    await settle()
    assert not waiter.done()

    breaker.cancel_probe()  # the probe was never sent
    assert breaker.state is BreakerState.OPEN
    assert await asyncio.wait_for(waiter, 0.5) is True  # the waiter probes instead
    assert breaker.state is BreakerState.HALF_OPEN
    assert await admit_within(breaker, 0.03) is None  # and only it

    breaker.cancel_probe()
    assert await admit_within(breaker) is True


@pytest.mark.parametrize("state", ["closed", "open"])
def test_cancel_probe_outside_half_open_changes_nothing(state):
    breaker = breaker_with(failure_threshold=1, clock=ManualClock())
    if state == "open":
        breaker.record_failure(probe=False)
    before = breaker.state
    breaker.cancel_probe()
    assert breaker.state is before
