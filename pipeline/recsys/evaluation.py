"""A model version as served (item and user embeddings, an item bias, the served user
vector's weights) and its evaluation as served: hit@k with the user's recent history
excluded, and the paired test a candidate must pass against popularity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.recsys import scoring
from pipeline.recsys.dataset import Dataset, recent_items
from pipeline.recsys.models import Csr, popularity_bias

# Validation users scored per candidate (a seeded sample past this): at most 5,000, fewer
# on large catalogues (10^8 scores), never fewer than 1,000.
EVAL_USERS_MAX, EVAL_USERS_MIN, EVAL_SCORES_MAX = 5_000, 1_000, 100_000_000
EVAL_SCORE_BLOCK = 1 << 24  # scores (users × items) per block of the evaluation
SIGNIFICANCE_Z = 2.0  # a candidate must beat popularity by this many standard errors


@dataclass
class ServedModel:
    """The arrays of one model version on dense indices (ids added when written)."""

    item_emb: np.ndarray
    user_emb: np.ndarray
    item_bias: np.ndarray
    user_weight: float = 1.0
    history_weight: float = 1.0

    def recommender(self) -> scoring.Recommender:
        return scoring.Recommender(
            {
                "item_emb": self.item_emb,
                "user_emb": self.user_emb,
                "item_bias": self.item_bias,
                "user_weight": np.asarray(self.user_weight, dtype=np.float32),
                "history_weight": np.asarray(self.history_weight, dtype=np.float32),
            }
        )

    def arrays(self, ds: Dataset) -> dict[str, np.ndarray]:
        keys = {} if ds.item_keys is None else {"item_keys": ds.item_keys}
        return {
            **keys,
            "item_ids": ds.item_ids,
            "user_ids": ds.user_ids[: self.user_emb.shape[0]],
            "item_emb": self.item_emb.astype(np.float32),
            "user_emb": self.user_emb.astype(np.float32),
            "item_bias": self.item_bias.astype(np.float32),
            "user_weight": np.asarray(self.user_weight, dtype=np.float32),
            "history_weight": np.asarray(self.history_weight, dtype=np.float32),
        }


def popularity_model(by_user: Csr, n_items: int) -> ServedModel:
    """Most popular items first (by users who met them), served by the same model.py."""
    return ServedModel(
        item_emb=np.zeros((n_items, 1), dtype=np.float32),
        user_emb=np.zeros((0, 1), dtype=np.float32),
        item_bias=popularity_bias(by_user.idx, n_items),
    )


@dataclass(frozen=True)
class EvalSet:
    users: np.ndarray  # dense
    history: np.ndarray  # dense, padded
    truth: np.ndarray  # dense item of the held-out event


def hits(model: ServedModel, ev: EvalSet, k: int) -> np.ndarray:
    """Per evaluated user: is the held-out item among the top k the model serves?"""
    rec = model.recommender()
    n_items = max(model.item_emb.shape[0], 1)
    step = max(1, EVAL_SCORE_BLOCK // n_items)
    out = np.zeros(len(ev.users), dtype=bool)
    for start in range(0, len(ev.users), step):
        end = start + step
        ids, _ = rec.recommend_dense(ev.users[start:end], ev.history[start:end], k)
        out[start:end] = (ids == ev.truth[start:end, None]).any(axis=1)
    return out


def hit_table(model: ServedModel, ev: EvalSet, k: int, biases: Sequence[np.ndarray]) -> np.ndarray:
    """hits() for the model with each of ``biases`` as its item bias (biases × users), from
    one matrix product: the held-out item is a hit when fewer than k items outside the
    history score at least as high (ties count against it)."""
    rec = model.recommender()
    n_items = max(model.item_emb.shape[0], 1)
    step = max(1, EVAL_SCORE_BLOCK // n_items)
    out = np.zeros((len(biases), len(ev.users)), dtype=bool)
    for start in range(0, len(ev.users), step):
        end = min(start + step, len(ev.users))
        history = ev.history[start:end]
        vecs = scoring.user_vectors(
            ev.users[start:end], history, rec.user_emb, rec.item_emb, rec.user_weight, rec.history_weight
        )
        base = vecs @ rec.item_emb.T
        rows, cols = np.nonzero(history != scoring.HISTORY_PAD)
        base[rows, history[rows, cols]] = -np.inf
        truth = ev.truth[start:end]
        at = np.arange(end - start)
        for b, bias in enumerate(biases):
            scores = base + bias
            mine = scores[at, truth]
            out[b, start:end] = (scores >= mine[:, None]).sum(axis=1) - 1 < k
    return out


def score_scale(model: ServedModel, ev: EvalSet) -> float:
    """Typical spread of a user's scores (sets the popularity blend's beta scale), on a few
    users (at most EVAL_SCORE_BLOCK scores: 16 users on 10^6 items)."""
    sample = slice(0, min(256, max(1, EVAL_SCORE_BLOCK // max(model.item_emb.shape[0], 1)), len(ev.users)))
    rec = model.recommender()
    vecs = scoring.user_vectors(
        ev.users[sample], ev.history[sample], rec.user_emb, rec.item_emb, rec.user_weight, rec.history_weight
    )
    scores = vecs @ rec.item_emb.T
    return float(np.mean(np.std(scores, axis=1))) if scores.size else 0.0


def beats(candidate: np.ndarray, baseline: np.ndarray, z: float = SIGNIFICANCE_Z) -> bool:
    """Paired sign test (McNemar): does the candidate hit significantly more often?"""
    wins = int((candidate & ~baseline).sum())
    losses = int((~candidate & baseline).sum())
    return wins - losses > z * math.sqrt(max(wins + losses, 1))


def eval_set(ds: Dataset, mask: np.ndarray, users: np.ndarray, truth_pos: np.ndarray, length: int) -> EvalSet:
    return EvalSet(users, recent_items(ds, mask, users, length), ds.items[truth_pos].astype(np.int64))
