"""coalesce: one request per user per window, with bounded recent-item history."""

from __future__ import annotations

import tracemalloc

import reactivex

from pipeline.events import Event, UserRequest, Window
from pipeline.operators.coalesce import RecentItems, coalesce, coalesce_window
from pipeline.testing.builders import event

_offsets = iter(range(1_000_000))


_clock = iter(range(1, 10**9))


def at(*items: int) -> list[tuple[int, int]]:
    """(ts, item) pairs with ever-increasing timestamps: arrival order = event order."""
    return [(next(_clock), item) for item in items]


def ev(user: int, item: int, ts: int, event_id: str | None = None) -> Event:
    """An event at the next offset: each one its own record."""
    return event(next(_offsets), user=user, item=item, ts=ts, event_id=event_id)


def win(*events: Event) -> Window:
    return Window(tuple(events), 1_000, 1_020)


def by_user(requests: list[UserRequest]) -> dict[int, UserRequest]:
    return {r.user_id: r for r in requests}


def test_one_request_per_user_in_first_seen_order_with_all_events():
    a1, b1, a2, c1, b2 = ev(1, 10, 100), ev(2, 20, 101), ev(1, 11, 102), ev(3, 30, 103), ev(2, 21, 104)
    requests = coalesce_window(win(a1, b1, a2, c1, b2), RecentItems(16, 0))
    assert [r.user_id for r in requests] == [1, 2, 3]
    got = by_user(requests)
    assert got[1].events == (a1, a2)
    assert got[2].events == (b1, b2)
    assert got[3].events == (c1,)
    assert got[1].history == (10, 11)
    assert got[2].history == (20, 21)
    assert got[3].history == (30,)


def test_history_is_ordered_by_timestamp_newest_last_and_events_keep_arrival_order():
    late, early, middle = ev(1, 10, 300), ev(1, 20, 100), ev(1, 30, 200)
    (request,) = coalesce_window(win(late, early, middle), RecentItems(16, 0))
    assert request.history == (20, 30, 10)
    assert request.events == (late, early, middle)


def test_history_holds_distinct_items_the_repeat_moves_to_newest():
    events = [ev(1, 5, 100), ev(1, 6, 200), ev(1, 5, 300), ev(1, 7, 400)]
    (request,) = coalesce_window(win(*events), RecentItems(16, 0))
    assert request.history == (6, 5, 7)
    assert len(request.events) == 4


def test_history_is_bounded_to_the_newest_items():
    events = [ev(1, item, 100 + item) for item in range(1, 8)]
    (request,) = coalesce_window(win(*events), RecentItems(3, 0))
    assert request.history == (5, 6, 7)
    assert len(request.events) == 7


def test_duplicate_event_id_adds_nothing_to_history_but_stays_in_events():
    first = ev(1, 10, 100, event_id="dup")
    other = ev(1, 20, 200, event_id="other")
    # A redelivery of "dup" (another offset). Give it a different item and a later ts so that
    # adding it would be visible in the history either way.
    again = ev(1, 30, 300, event_id="dup")
    (request,) = coalesce_window(win(first, other, again), RecentItems(16, 0))
    assert request.history == (10, 20)
    assert request.events == (first, other, again)
    assert len({e.ref for e in request.events}) == 3


def test_duplicate_of_same_item_does_not_reorder_history():
    first = ev(1, 10, 100, event_id="dup")
    other = ev(1, 20, 200, event_id="other")
    again = ev(1, 10, 300, event_id="dup")  # would move 10 to newest if it counted
    (request,) = coalesce_window(win(first, other, again), RecentItems(16, 0))
    assert request.history == (10, 20)
    assert len(request.events) == 3


def test_memory_across_windows_prepends_remembered_items():
    recent = RecentItems(history_length=4, max_users=10)
    (r1,) = coalesce_window(win(ev(1, 1, 100), ev(1, 2, 101)), recent)
    assert r1.history == (1, 2)
    (r2,) = coalesce_window(win(ev(1, 3, 200), ev(1, 1, 201)), recent)
    assert r2.history == (2, 3, 1)
    (r3,) = coalesce_window(win(ev(1, 4, 300), ev(1, 5, 301)), recent)
    assert r3.history == (3, 1, 4, 5)  # bounded to 4, newest last
    assert len(r3.events) == 2  # only this window's events


def test_memory_is_per_user():
    recent = RecentItems(history_length=8, max_users=10)
    coalesce_window(win(ev(1, 1, 100), ev(2, 50, 100)), recent)
    got = by_user(coalesce_window(win(ev(2, 51, 200), ev(1, 2, 200)), recent))
    assert got[1].history == (1, 2)
    assert got[2].history == (50, 51)


def test_recent_items_forgets_least_recently_active_users_beyond_max_users():
    recent = RecentItems(history_length=5, max_users=2)
    assert recent.extend(1, at(11)) == (11,)
    assert recent.extend(2, at(21)) == (21,)
    assert recent.extend(1, at(12)) == (11, 12)  # user 1 now more recently active than 2
    assert recent.extend(3, at(31)) == (31,)  # third user: user 2 (least recent) is forgotten
    assert recent.extend(3, []) == (31,)
    assert recent.extend(1, []) == (11, 12)  # user 1 survived
    assert recent.extend(2, at(22)) == (22,)  # user 2's 21 was forgotten


def test_recent_items_keeps_exactly_the_newest_max_users():
    recent = RecentItems(history_length=3, max_users=50)
    for user in range(500):
        recent.extend(user, at(user))
    # Probing a remembered user only refreshes it, so probe the newest 50 first.
    assert [recent.extend(u, []) for u in range(450, 500)] == [(u,) for u in range(450, 500)]
    assert recent.extend(449, []) == ()


def test_recent_items_stay_within_their_memory_budget_forgetting_the_least_recent():
    recent = RecentItems(history_length=16, max_users=10**9, max_bytes=1 << 20)
    for user in range(20_000):
        recent.extend(user, at(*range(user, user + 16)))
    assert recent.bytes <= 1 << 20
    kept = len(recent)
    assert 2_000 < kept < 3_000  # ~456 estimated bytes a user
    assert recent.extend(19_999, []) == tuple(range(19_999, 20_015))
    assert recent.extend(20_000 - kept - 1, []) == ()  # the least recent beyond the budget


def test_the_memory_estimate_is_not_below_what_python_allocates():
    tracemalloc.start()
    try:
        recent = RecentItems(history_length=16, max_users=10**9, max_bytes=1 << 40)
        before = tracemalloc.get_traced_memory()[0]
        for user in range(20_000):
            recent.extend(user, at(*range(100_000 + user, 100_016 + user)))
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert allocated <= recent.bytes, (allocated / 20_000, recent.bytes / 20_000)
    assert recent.bytes < 1.3 * allocated  # and not wildly above


def test_remembered_users_zero_keeps_nothing():
    recent = RecentItems(history_length=5, max_users=0)
    assert recent.extend(1, at(1, 2)) == (1, 2)
    assert recent.extend(1, at(3)) == (3,)
    assert recent.extend(1, []) == ()


def test_operator_maps_each_window_and_remembers_across_windows():
    w1 = win(ev(1, 1, 100), ev(2, 2, 100))
    w2 = win(ev(1, 3, 200))
    out = []
    reactivex.of(w1, w2).pipe(coalesce(RecentItems(4, max_users=10))).subscribe(out.append)
    assert [w for w, _ in out] == [w1, w2]
    assert [(r.user_id, r.history) for r in out[0][1]] == [(1, (1,)), (2, (2,))]
    assert [(r.user_id, r.history) for r in out[1][1]] == [(1, (1, 3))]


def test_operator_without_memory_sends_only_the_window_items():
    w1 = win(ev(1, 1, 100))
    w2 = win(ev(1, 3, 200))
    out = []
    reactivex.of(w1, w2).pipe(coalesce(RecentItems(4, max_users=0))).subscribe(out.append)
    assert [r.history for _, reqs in out for r in reqs] == [(1,), (3,)]


def test_empty_window_gives_no_requests():
    assert coalesce_window(win(), RecentItems(4, 10)) == []


def test_out_of_order_events_take_their_place_by_event_time() -> None:
    recent = RecentItems(history_length=4, max_users=10, by_event_time=True)
    assert recent.extend(1, [(100, 5), (300, 7)]) == (5, 7)
    # A late view (ts 200) arriving after item 7 does not become the newest item.
    assert recent.extend(1, [(200, 6)]) == (5, 6, 7)
    # A repeat interaction moves the item to its latest timestamp.
    assert recent.extend(1, [(400, 5)]) == (6, 7, 5)


def test_arrival_order_when_configured() -> None:
    recent = RecentItems(history_length=4, max_users=10, by_event_time=False)
    assert recent.extend(1, [(100, 5), (300, 7)]) == (5, 7)
    assert recent.extend(1, [(200, 6)]) == (5, 7, 6)
