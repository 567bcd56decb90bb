"""The interactions on a dense index and the per-user time split the trainer selects and
tests on (docs/training.md):

    log (user, item, ts, type; catalogue ids) → Dataset (dense 0..n-1, sorted by user, time)
    split: per user, test = the last interaction with an item new to the user, validation =
           the one before, train = everything before the validation event
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.recsys import scoring
from pipeline.recsys.data import InteractionLog
from pipeline.recsys.models import Csr

# Weight of one interaction of each type in a pair's confidence: a purchase says more.
TYPE_WEIGHTS: dict[str, tuple[float, float, float]] = {"graded": (1.0, 3.0, 8.0), "flat": (1.0, 1.0, 1.0)}
MIN_USER_ITEMS = 3  # distinct items a user needs to give a test and a validation event


@dataclass(frozen=True)
class Dataset:
    """Interactions on dense indices, sorted by user, then time, then arrival."""

    user_ids: np.ndarray  # dense user → catalogue id (sorted)
    item_ids: np.ndarray  # dense item → catalogue id (sorted)
    users: np.ndarray  # int32
    items: np.ndarray  # int32
    kinds: np.ndarray  # int8: index into TYPE_NAMES
    item_keys: np.ndarray | None = None  # dense item → its own id as JSON text (string ids only)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)


def build_dataset(interactions: InteractionLog, catalogue_items: np.ndarray | None = None) -> Dataset:
    """Sparse catalogue ids → dense 0..n-1. ``catalogue_items``: ids the model must know even
    without an interaction (they are served, scored low)."""
    users, items, ts, kinds = interactions.arrays()
    user_ids, dense_users = np.unique(users, return_inverse=True)
    item_ids = np.unique(items) if catalogue_items is None else np.union1d(items, catalogue_items)
    dense_items = np.searchsorted(item_ids, items)
    order = np.lexsort((ts, dense_users))  # stable: arrival order among equal times
    return Dataset(
        user_ids.astype(np.int64),
        item_ids.astype(np.int64),
        dense_users[order].astype(np.int32),
        dense_items[order].astype(np.int32),
        kinds[order].astype(np.int8),
        interactions.item_keys(item_ids),
    )


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # mask: before each user's validation event (all of a user without one)
    fit: np.ndarray  # mask: before each user's test event (train + validation)
    val_users: np.ndarray  # dense users with a validation and a test event
    val_pos: np.ndarray  # their validation event's position in the dataset
    test_pos: np.ndarray  # their test event's position


def split_by_time(ds: Dataset, min_user_items: int = MIN_USER_ITEMS) -> Split:
    """Per user in time order: test = the last interaction with an item new to the user,
    validation = the new-item interaction before it; only users with ``min_user_items``
    distinct items (at least one is left to train on) give those two events."""
    n = len(ds)
    key = ds.users.astype(np.int64) * ds.n_items + ds.items
    _, first_idx = np.unique(key, return_index=True)
    firsts = np.sort(first_idx)  # grouped by user (the dataset is), in time order
    distinct = np.bincount(ds.users[firsts], minlength=ds.n_users)
    ends = np.cumsum(distinct)
    eligible = np.flatnonzero(distinct >= max(min_user_items, 2))
    val_cut = np.full(ds.n_users, n, dtype=np.int64)
    test_cut = np.full(ds.n_users, n, dtype=np.int64)
    test_pos = firsts[ends[eligible] - 1]
    val_pos = firsts[ends[eligible] - 2]
    val_cut[eligible], test_cut[eligible] = val_pos, test_pos
    position = np.arange(n)
    return Split(
        position < val_cut[ds.users],
        position < test_cut[ds.users],
        eligible.astype(np.int64),
        val_pos,
        test_pos,
    )


def recent_items(ds: Dataset, mask: np.ndarray, users: np.ndarray, length: int) -> np.ndarray:
    """Each of ``users``' most recent distinct items among the ``mask``ed events, newest last
    and padded at the end (the pipeline's request shape), as dense indices."""
    out = np.full((len(users), length), scoring.HISTORY_PAD, dtype=np.int64)
    row_of = np.full(ds.n_users, -1, dtype=np.int64)
    row_of[users] = np.arange(len(users))
    sel = np.flatnonzero(mask & (row_of[ds.users] >= 0))
    if not len(sel) or length <= 0:
        return out
    key = ds.users[sel].astype(np.int64) * ds.n_items + ds.items[sel]
    _, rev = np.unique(key[::-1], return_index=True)
    last = np.sort(sel[len(sel) - 1 - rev])  # last occurrence of each pair, by user then time
    owner = ds.users[last]
    counts = np.bincount(owner, minlength=ds.n_users)
    from_end = np.cumsum(counts)[owner] - 1 - np.arange(len(last))  # 0: the newest
    keep = from_end < length
    column = np.minimum(counts, length)[owner] - 1 - from_end
    out[row_of[owner[keep]], column[keep]] = ds.items[last[keep]]
    return out


def pair_matrices(ds: Dataset, mask: np.ndarray, weights: str) -> tuple[Csr, Csr]:
    """The (user, item) pairs of the masked events, valued by the sum of their type weights:
    by user and by item."""
    sel = np.flatnonzero(mask)
    key = ds.users[sel].astype(np.int64) * ds.n_items + ds.items[sel]
    pairs, inverse = np.unique(key, return_inverse=True)
    per_type = np.asarray(TYPE_WEIGHTS[weights], dtype=np.float64)
    value = np.bincount(inverse.reshape(-1), weights=per_type[ds.kinds[sel]])
    rows, cols = pairs // ds.n_items, pairs % ds.n_items
    by_user = Csr.from_coo(rows, cols, value, ds.n_users)
    by_item = Csr.from_coo(cols, rows, value, ds.n_items)
    return by_user, by_item
