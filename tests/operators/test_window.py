"""window: virtual-time tests in the style of reactivex's own test_windowwithtime.py.

TestScheduler ticks are seconds, so ``window(max_ms=50_000, ...)`` closes 50 ticks after a
window opens, and a Window opened at tick 210 has ``start_ms == 210_000``."""

from __future__ import annotations

import random

import pytest
from reactivex.testing import ReactiveTest, TestScheduler

from pipeline.events import Event, Window
from pipeline.operators.window import window
from pipeline.testing.builders import event

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error
subscribe = ReactiveTest.subscribe


E = [event(i, ts=1_000 + i) for i in range(20)]


def W(events: list[Event], start_tick: int, end_tick: int) -> Window:
    return Window(tuple(events), start_tick * 1_000, end_tick * 1_000)


def run(messages, max_ms: int, max_events: int, **start_kwargs):
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(messages)

    def create():
        return xs.pipe(window(max_ms, max_events, scheduler))

    results = scheduler.start(create, **start_kwargs)
    return results, xs


def test_time_bound_closes_max_ms_after_first_event_even_while_events_keep_coming():
    results, xs = run(
        [
            on_next(210, [E[0]]),
            on_next(220, [E[1], E[2]]),
            on_next(240, [E[3]]),
            on_next(255, [E[4]]),  # still inside the window opened at 210
            on_next(265, [E[5]]),  # after the close at 260: opens a new window
            on_next(300, [E[6]]),
            on_completed(400),
        ],
        max_ms=50_000,
        max_events=100,
    )
    assert results.messages == [
        on_next(260, W(E[0:5], 210, 260)),
        on_next(315, W(E[5:7], 265, 315)),
        on_completed(400),
    ]
    assert xs.subscriptions == [subscribe(200, 400)]


def test_window_start_is_its_first_event_not_the_subscription():
    results, xs = run(
        [on_next(330, [E[0]]), on_completed(500)],
        max_ms=50_000,
        max_events=10,
    )
    assert results.messages == [on_next(380, W(E[0:1], 330, 380)), on_completed(500)]
    assert xs.subscriptions == [subscribe(200, 500)]


def test_count_bound_splits_an_overflowing_batch_exactly_and_times_the_remainder_from_then():
    results, xs = run(
        [
            on_next(210, [E[0], E[1]]),
            on_next(220, E[2:9]),  # 2 + 7 = 9 buffered, max 3: three full windows, none left
            on_next(230, E[9:11]),  # opens a fresh window at 230
            on_next(240, E[11:12]),  # fills it: closes by count at 240
            on_next(250, E[12:13]),  # nothing was left over: a new window opens at 250
            on_completed(400),
        ],
        max_ms=50_000,
        max_events=3,
    )
    assert results.messages == [
        on_next(220, W(E[0:3], 210, 220)),
        on_next(220, W(E[3:6], 220, 220)),
        on_next(220, W(E[6:9], 220, 220)),
        on_next(240, W(E[9:12], 230, 240)),
        on_next(300, W(E[12:13], 250, 300)),
        on_completed(400),
    ]
    assert xs.subscriptions == [subscribe(200, 400)]


def test_overflow_remainder_opens_a_new_window_timed_from_the_overflow():
    results, _ = run(
        [
            on_next(210, [E[0], E[1]]),
            on_next(220, E[2:7]),  # 7 buffered, max 3: (0,1,2) (3,4,5) and remainder (6,)
            on_next(250, [E[7]]),  # joins the remainder's window (opened at 220)
            on_completed(400),
        ],
        max_ms=50_000,
        max_events=3,
    )
    assert results.messages == [
        on_next(220, W(E[0:3], 210, 220)),
        on_next(220, W(E[3:6], 220, 220)),
        # The remainder's window opened at 220, so it closes at 270, not at 260 (the first
        # window's timer) and not 50 s after the next event.
        on_next(270, W(E[6:8], 220, 270)),
        on_completed(400),
    ]


def test_stale_timer_of_a_window_closed_by_count_emits_nothing():
    results, _ = run(
        [
            on_next(210, E[0:3]),  # closes by count at once; its timer (due 260) is stale
            on_next(250, [E[3]]),  # opens a new window at 250, due 300
            on_completed(400),
        ],
        max_ms=50_000,
        max_events=3,
    )
    assert results.messages == [
        on_next(210, W(E[0:3], 210, 210)),
        on_next(300, W(E[3:4], 250, 300)),
        on_completed(400),
    ]


def test_stale_timer_with_no_later_events_emits_no_empty_window():
    results, _ = run(
        [on_next(210, E[0:2]), on_next(220, E[2:4]), on_completed(600)],
        max_ms=50_000,
        max_events=2,
    )
    assert results.messages == [
        on_next(210, W(E[0:2], 210, 210)),
        on_next(220, W(E[2:4], 220, 220)),
        on_completed(600),
    ]
    windows = [m.value.value for m in results.messages if m.value.kind == "N"]
    assert all(w.events for w in windows)


def test_empty_lists_are_ignored_and_do_not_open_a_window():
    results, _ = run(
        [
            on_next(210, []),  # would open a window due at 260 if it counted
            on_next(230, [E[0]]),
            on_next(240, []),
            on_next(300, []),
            on_completed(400),
        ],
        max_ms=50_000,
        max_events=5,
    )
    assert results.messages == [on_next(280, W(E[0:1], 230, 280)), on_completed(400)]


def test_only_empty_lists_emit_nothing():
    results, xs = run([on_next(210, []), on_next(220, []), on_completed(300)], max_ms=50_000, max_events=5)
    assert results.messages == [on_completed(300)]
    assert xs.subscriptions == [subscribe(200, 300)]


def test_on_completed_flushes_the_open_window_then_completes():
    results, xs = run(
        [on_next(210, [E[0]]), on_next(220, [E[1]]), on_completed(230)],
        max_ms=50_000,
        max_events=10,
    )
    # Flushed at completion; the pending timer (due 260) must not add anything after it.
    assert results.messages == [on_next(230, W(E[0:2], 210, 230)), on_completed(230)]
    assert xs.subscriptions == [subscribe(200, 230)]


def test_on_completed_with_nothing_open_just_completes():
    results, _ = run(
        [on_next(210, [E[0]]), on_completed(300)],
        max_ms=50_000,
        max_events=10,
    )
    assert results.messages == [on_next(260, W(E[0:1], 210, 260)), on_completed(300)]


def test_errors_pass_through():
    error = RuntimeError("broker gone")
    results, xs = run(
        [on_next(210, [E[0]]), on_next(215, E[1:3]), on_error(230, error)],
        max_ms=50_000,
        max_events=2,
    )
    # The count-closed window is delivered before the error; the open one is not, and its
    # timer (due 265) emits nothing after the error.
    assert results.messages == [on_next(215, W(E[0:2], 210, 215)), on_error(230, error)]
    assert xs.subscriptions == [subscribe(200, 230)]


def test_dispose_cancels_the_pending_timer():
    results, xs = run([on_next(980, [E[0]])], max_ms=50_000, max_events=10)
    assert results.messages == []  # due at 1030, after the dispose at 1000
    assert xs.subscriptions == [subscribe(200, 1000)]


def test_uses_the_subscription_scheduler_when_none_given():
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, [E[0]]), on_completed(400))
    results = scheduler.start(lambda: xs.pipe(window(20_000, 10)))
    assert results.messages == [on_next(230, W(E[0:1], 210, 230)), on_completed(400)]


@pytest.mark.parametrize(("max_ms", "max_events"), [(0, 1), (1, 0), (-5, 10), (10, -1)])
def test_bounds_must_be_positive(max_ms, max_events):
    with pytest.raises(ValueError, match="positive"):
        window(max_ms, max_events)


def test_every_event_exactly_once_and_in_order_across_time_and_count_closes():
    """10,000 events pushed in varied batch sizes, with time and count closes interleaved:
    every event comes out in exactly one window, in order (a race between the two closes
    would drop or repeat one)."""
    rng = random.Random(20240607)
    max_ms, max_events = 5_000, 97  # 5 ticks
    events = [event(i, user=i % 31, ts=1_000 + i) for i in range(10_000)]
    messages = []
    tick, pos = 201, 0
    while pos < len(events):
        size = rng.choice([0, 0, 1, 2, 3, 7, 20, 50, 96, 97, 98, 150, 300])
        messages.append(on_next(tick, events[pos : pos + size]))
        pos += size
        tick += rng.choice([1, 1, 2, 3, 6, 11])
    end = tick + 1
    messages.append(on_completed(end))

    results, xs = run(messages, max_ms=max_ms, max_events=max_events, disposed=end + 100)

    assert results.messages[-1] == on_completed(end)
    assert xs.subscriptions == [subscribe(200, end)]
    windows = [m.value.value for m in results.messages[:-1]]
    assert all(m.value.kind == "N" for m in results.messages[:-1])

    out = [e for w in windows for e in w.events]
    assert len(out) == len(events)
    assert [e.event_id for e in out] == [e.event_id for e in events]

    by_count = by_time = 0
    for i, w in enumerate(windows):
        assert 0 < len(w.events) <= max_events
        assert w.start_ms <= w.end_ms <= w.start_ms + max_ms
        if i:
            assert windows[i - 1].end_ms <= w.start_ms
        if len(w.events) == max_events and w.end_ms - w.start_ms < max_ms:
            by_count += 1
        elif w.end_ms - w.start_ms == max_ms:
            by_time += 1
        else:
            assert i == len(windows) - 1, f"window {i} closed early without being full: {w}"
    assert by_count > 20
    assert by_time > 20


def test_an_error_raised_downstream_on_the_timer_becomes_on_error():
    """A window closed by its timer runs the rest of the chain from a scheduler callback: an
    exception there must reach on_error instead of vanishing with the callback."""
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, [E[0]]))
    errors: list[Exception] = []

    def explode(_: Window) -> None:
        raise RuntimeError("downstream bug")

    xs.pipe(window(50_000, 100, scheduler)).subscribe(explode, errors.append, scheduler=scheduler)
    scheduler.advance_to(300)
    assert [str(e) for e in errors] == ["downstream bug"]
