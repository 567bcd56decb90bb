"""batch: a window's per-user requests → inference batches of at most max_size users."""

from __future__ import annotations

import pytest
import reactivex

from pipeline.events import InferenceBatch, UserRequest, Window
from pipeline.operators.batch import batch, split_batches
from pipeline.testing.builders import event, user_request

WINDOW = Window((), 5_000, 5_020)


def req(user: int) -> UserRequest:
    return user_request(event(user, user=user))


@pytest.mark.parametrize(
    ("count", "max_size", "sizes"),
    [
        (0, 4, []),
        (1, 4, [1]),
        (4, 4, [4]),
        (5, 4, [4, 1]),
        (8, 4, [4, 4]),
        (9, 4, [4, 4, 1]),
        (3, 1, [1, 1, 1]),
        (130, 128, [128, 2]),
    ],
)
def test_split_sizes(count, max_size, sizes):
    requests = [req(u) for u in range(count)]
    batches = split_batches(WINDOW, requests, max_size)
    assert [len(b.requests) for b in batches] == sizes
    assert [r for b in batches for r in b.requests] == requests  # all, once, in order


def test_batches_carry_the_window_bounds_and_defaults():
    (only,) = split_batches(WINDOW, [req(1), req(2)], 10)
    assert only == InferenceBatch((req(1), req(2)), 5_000, 5_020)
    assert only.lane == "default"
    assert only.priority == 0
    assert only.event_count == 2


def test_operator_emits_every_chunk_of_every_window_then_completes():
    w2 = Window((), 6_000, 6_020)
    out, done = [], []
    reactivex.of((WINDOW, [req(u) for u in range(5)]), (w2, []), (w2, [req(9)])).pipe(batch(2)).subscribe(
        out.append, on_completed=lambda: done.append(True)
    )
    assert [[r.user_id for r in b.requests] for b in out] == [[0, 1], [2, 3], [4], [9]]
    assert [b.window_start_ms for b in out] == [5_000, 5_000, 5_000, 6_000]
    assert done == [True]


def test_operator_passes_errors_through():
    errors = []
    reactivex.throw(RuntimeError("boom")).pipe(batch(2)).subscribe(on_error=errors.append)
    assert [str(e) for e in errors] == ["boom"]


@pytest.mark.parametrize("max_size", [0, -1])
def test_max_size_must_be_positive(max_size):
    with pytest.raises(ValueError, match="positive"):
        batch(max_size)
