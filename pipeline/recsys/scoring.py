"""Scoring shared by the trainer's evaluation and the Triton model.

This file is copied next to ``model.py`` in every model version, so the served model and
the offline evaluation rank with the very same code. It must depend on numpy only.

A model speaks the catalogue's ids (sparse, possibly large) outside and dense indices
0..n-1 inside: ``item_ids`` and ``user_ids`` are the sorted catalogue ids, the dense index
of an id is its place in them (``np.searchsorted``). Every score is one matrix product plus
an item bias::

    score(user, item) = vec(user) · item_emb[item] + item_bias[item]
    vec(user) = user_weight * user_emb[user] + history_weight * mean(item_emb[history])

A user the model does not know has no learned vector: it is served from its history alone
(``history_weight`` 1). A popularity model is zero embeddings and a bias of log-counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

HISTORY_PAD = -1  # history slots without an item
SCORE_BLOCK = 1 << 24  # scores (rows x items) held at once: a batch is scored in row blocks


def dense_index(catalogue: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The dense index of each id in the sorted ``catalogue``; -1 where it is not in it."""
    ids = np.asarray(ids, dtype=np.int64)
    if catalogue.size == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(catalogue, ids), catalogue.size - 1)
    return np.where(catalogue[pos] == ids, pos, -1).astype(np.int64)


def user_vectors(
    users: np.ndarray,
    history: np.ndarray,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    user_weight: float = 1.0,
    history_weight: float = 1.0,
) -> np.ndarray:
    """Dense ``users`` (-1: unknown) and dense ``history`` (HISTORY_PAD: empty slot) → one
    vector per row. Known users: their learned vector plus the mean of their recent items,
    weighted; unknown users: the mean of their recent items."""
    batch = users.shape[0]
    known = (users >= 0) & (users < user_emb.shape[0])
    vecs = np.zeros((batch, item_emb.shape[1]), dtype=np.float32)
    if user_weight:
        vecs[known] = user_weight * user_emb[users[known]]
    valid = history != HISTORY_PAD
    counts = valid.sum(axis=1, keepdims=True)
    safe = np.where(valid, history, 0)
    mean = (item_emb[safe] * valid[..., None]).sum(axis=1) / np.maximum(counts, 1)
    weight = np.where(known, np.float32(history_weight), np.float32(1.0))[:, None]
    vecs += weight * mean
    return vecs


def top_k(
    vecs: np.ndarray,
    item_emb: np.ndarray,
    history: np.ndarray,
    k: int,
    item_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k dense item indices and scores per row, never an item in that row's (dense)
    history. Fewer than k items: the rest is -1 with score -inf."""
    scores = vecs @ item_emb.T
    if item_bias is not None:
        scores += item_bias
    rows, cols = np.nonzero(history != HISTORY_PAD)
    scores[rows, history[rows, cols]] = -np.inf
    n_items = scores.shape[1]
    kk = min(k, n_items)
    if kk == 0:
        ids = np.full((scores.shape[0], k), -1, dtype=np.int64)
        return ids, np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    # k beyond the items outside the history: the history's -inf fill the tail, not as items
    ids[best == -np.inf] = -1
    if kk < k:
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return ids, best


class Recommender:
    """The arrays of one model version (embeddings.npz) and how they are scored."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.item_emb = np.asarray(arrays["item_emb"], dtype=np.float32)
        self.user_emb = np.asarray(arrays["user_emb"], dtype=np.float32)
        n_items, n_users = self.item_emb.shape[0], self.user_emb.shape[0]
        # Versions written before the dense index: the dense index is the id itself.
        self.item_ids = np.asarray(arrays.get("item_ids", np.arange(n_items)), dtype=np.int64)
        self.user_ids = np.asarray(arrays.get("user_ids", np.arange(n_users)), dtype=np.int64)
        # String ids (pipeline/ids.py): item_ids holds their hashes and item_keys each
        # item's own id as JSON text (``18``, ``"SKU-00018"``), what the model answers with.
        keys = arrays.get("item_keys")
        self.item_keys = None if keys is None else [str(k).encode() for k in np.asarray(keys).tolist()]
        bias = arrays.get("item_bias")
        self.item_bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self.user_weight = float(arrays.get("user_weight", 1.0))
        self.history_weight = float(arrays.get("history_weight", 1.0))

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    def dense_history(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue ids → dense indices, an item the model does not know as an empty slot;
        and how many such items each row named."""
        dense = dense_index(self.item_ids, history)
        pad = history == HISTORY_PAD
        unknown = ~pad & (dense < 0)
        dense[pad | unknown] = HISTORY_PAD
        return dense, unknown.sum(axis=1)

    def unknown_items(self, history: np.ndarray) -> np.ndarray:
        """Per row, the history items outside the catalogue (ignored when scoring)."""
        return self.dense_history(history)[1]

    def recommend_dense(
        self, users: np.ndarray, history: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dense users and history in, dense item indices out; rows in blocks of at most
        SCORE_BLOCK scores, so memory stays bounded on a large catalogue."""
        step = max(1, SCORE_BLOCK // max(self.n_items, 1))
        ids = np.full((users.shape[0], k), -1, dtype=np.int64)
        scores = np.full((users.shape[0], k), -np.inf, dtype=np.float32)
        for start in range(0, users.shape[0], step):
            rows = slice(start, start + step)
            block = history[rows]
            vecs = user_vectors(
                users[rows], block, self.user_emb, self.item_emb, self.user_weight, self.history_weight
            )
            ids[rows], scores[rows] = top_k(vecs, self.item_emb, block, k, self.item_bias)
        return ids, scores

    def recommend(self, user_ids: np.ndarray, history: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue ids in and out; unknown history items are ignored."""
        ids, scores, _ = self.answer(user_ids, history, k)
        return ids, scores

    def answer(
        self, user_ids: np.ndarray, history: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """recommend's catalogue ids and scores, and the dense indices they came from."""
        users = dense_index(self.user_ids, np.asarray(user_ids).reshape(-1))
        dense, _ = self.dense_history(history)
        ids, scores = self.recommend_dense(users, dense, k)
        return np.where(ids >= 0, self.item_ids[np.maximum(ids, 0)], -1), scores, ids

    def keys_json(self, dense: np.ndarray) -> list[bytes]:
        """Per row, its items' own ids as one JSON array (``[18,"SKU-00018"]``), padding left
        out; only for a catalogue with string ids (``item_keys``)."""
        keys = self.item_keys
        assert keys is not None
        return [b"[" + b",".join([keys[i] for i in row if i >= 0]) + b"]" for row in dense.tolist()]
