"""Request lifecycle counts: current per state, and how many ever entered each."""

from __future__ import annotations

from pipeline.triton.lifecycle import LifecycleCounts, RequestState

S = RequestState


def walk(counts: LifecycleCounts, *states: RequestState) -> None:
    previous = None
    for state in states:
        counts.enter(state, previous)
        previous = state


def test_fresh_snapshot_is_all_zero_for_every_state():
    snap = LifecycleCounts().snapshot()
    names = ["START", "READ", "ISSUED", "WRITEREADY", "COMPLETE"]
    assert snap == {"current": dict.fromkeys(names, 0), "entered": dict.fromkeys(names, 0)}


def test_a_full_request_leaves_nothing_current():
    counts = LifecycleCounts()
    walk(counts, S.START, S.READ, S.ISSUED, S.WRITEREADY, S.COMPLETE)
    snap = counts.snapshot()
    assert set(snap["current"].values()) == {0}
    assert snap["entered"] == {"START": 1, "READ": 1, "ISSUED": 1, "WRITEREADY": 1, "COMPLETE": 1}


def test_requests_in_flight_are_counted_where_they_are():
    counts = LifecycleCounts()
    walk(counts, S.START, S.READ, S.ISSUED)
    walk(counts, S.START, S.READ, S.ISSUED)
    walk(counts, S.START, S.READ)
    walk(counts, S.START)
    snap = counts.snapshot()
    assert snap["current"] == {"START": 1, "READ": 1, "ISSUED": 2, "WRITEREADY": 0, "COMPLETE": 0}
    assert snap["entered"] == {"START": 4, "READ": 3, "ISSUED": 2, "WRITEREADY": 0, "COMPLETE": 0}


def test_failure_completes_from_the_state_it_reached():
    counts = LifecycleCounts()
    walk(counts, S.START, S.READ, S.ISSUED)
    counts.enter(S.COMPLETE, S.ISSUED)  # e.g. a timeout
    walk(counts, S.START, S.READ)
    counts.enter(S.COMPLETE, S.READ)  # e.g. the stream refused the submit
    snap = counts.snapshot()
    assert set(snap["current"].values()) == {0}
    assert snap["entered"]["COMPLETE"] == 2
    assert snap["entered"]["WRITEREADY"] == 0
