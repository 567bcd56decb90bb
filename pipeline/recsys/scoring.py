"""Scoring shared by the trainer's evaluation and the Triton model.

This file is copied next to ``model.py`` in every model version, so the served model and
the offline evaluation rank with the very same code. It must depend on numpy only.
"""

from __future__ import annotations

import numpy as np

HISTORY_PAD = -1  # history slots without an item


def user_vectors(
    user_ids: np.ndarray,
    history: np.ndarray,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    history_weight: float = 1.0,
) -> np.ndarray:
    """Known users keep their learned vector; the mean of the recent items is folded in
    so that new users and fresh interests are served too."""
    batch = user_ids.shape[0]
    known = (user_ids >= 0) & (user_ids < user_emb.shape[0])
    vecs = np.zeros((batch, item_emb.shape[1]), dtype=np.float32)
    vecs[known] = user_emb[user_ids[known]]
    valid = history != HISTORY_PAD
    counts = valid.sum(axis=1, keepdims=True)
    safe = np.where(valid, history, 0)
    summed = (item_emb[safe] * valid[..., None]).sum(axis=1)
    vecs += history_weight * summed / np.maximum(counts, 1)
    return vecs


def top_k(
    vecs: np.ndarray, item_emb: np.ndarray, history: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item ids and scores per row, never an item present in that row's history."""
    scores = vecs @ item_emb.T
    rows, cols = np.nonzero(history != HISTORY_PAD)
    scores[rows, history[rows, cols]] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_scores, order, axis=1).astype(np.float32)


def invalid_history(history: np.ndarray, n_items: int) -> np.ndarray:
    """Rows whose history names an item outside the catalogue (or a negative id)."""
    bad = (history != HISTORY_PAD) & ((history < 0) | (history >= n_items))
    return bad.any(axis=1)
