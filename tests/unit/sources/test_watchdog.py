"""The stall watchdog: work waiting and nothing finishing for stall_after_s is a stall."""

from __future__ import annotations

import logging

import pytest

from pipeline.metrics import Metrics
from pipeline.sources.watchdog import StallWatchdog


class Counters:
    def __init__(self) -> None:
        self.finished = 0
        self.in_flight = 0


def make(counters: Counters, stall_after_s: float = 10.0) -> StallWatchdog:
    return StallWatchdog(
        source=None,  # type: ignore[arg-type]  (check() does not touch the source)
        progress=lambda: counters.finished,
        in_flight=lambda: counters.in_flight,
        stall_after_s=stall_after_s,
        metrics=Metrics(),
    )


def test_lag_without_progress_is_a_stall_after_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    c = Counters()
    dog = make(c)
    assert dog.check(lag=100, now=1_000.0) is False
    assert dog.check(lag=100, now=1_009.0) is False
    with caplog.at_level(logging.ERROR):
        assert dog.check(lag=100, now=1_010.5) is True
    assert "STALLED" in caplog.text
    assert dog.metrics.stalled._value.get() == 1


def test_progress_resets_the_clock_and_clears_the_stall() -> None:
    c = Counters()
    dog = make(c)
    dog.check(lag=5, now=0.0)
    assert dog.check(lag=5, now=11.0) is True
    c.finished += 1
    assert dog.check(lag=5, now=12.0) is False
    assert dog.metrics.stalled._value.get() == 0
    assert dog.check(lag=5, now=21.0) is False  # 9 s since the last progress
    assert dog.check(lag=5, now=22.5) is True


def test_no_work_waiting_is_idle_not_stalled() -> None:
    c = Counters()
    dog = make(c)
    for t in range(0, 100, 5):
        assert dog.check(lag=0, now=float(t)) is False


def test_events_in_flight_count_as_work_waiting() -> None:
    c = Counters()
    c.in_flight = 3  # e.g. Triton hangs: nothing lags on Kafka, nothing finishes either
    dog = make(c, stall_after_s=2.0)
    dog.check(lag=0, now=0.0)
    assert dog.check(lag=0, now=2.5) is True
