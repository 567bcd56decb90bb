"""Training on real data: interactions on a dense index, a per-user time split, candidate
models chosen by validation hit rate against the most-popular baseline, and the writer of
a versioned Triton model repository.

    log (user, item, ts, type; catalogue ids) → Dataset (dense 0..n-1, sorted by user, time)
    split: per user, test = the last interaction with an item new to the user, validation =
           the one before, train = everything before the validation event
    select: candidates fitted on train, scored on validation (hit@10 as served: the user's
            recent history excluded); a candidate must beat popularity significantly
    refit: the chosen candidate on train + validation, scored on test; that model is written

See docs/training.md.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.recsys import scoring
from pipeline.recsys.data import TYPE_NAMES, InteractionLog, from_events
from pipeline.recsys.models import (
    AlsConfig,
    Csr,
    SvdConfig,
    mean_item_vectors,
    popularity_bias,
    svd_item_factors,
    train_als,
)

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "recommender"


def serving_code() -> dict[str, Path]:
    """The files a model version is served with, by name: this release's model.py and
    scoring.py (the same scoring the trainer evaluates with)."""
    return {"model.py": TEMPLATE_DIR / "1" / "model.py", "scoring.py": Path(scoring.__file__)}


# Weight of one interaction of each type in a pair's confidence: a purchase says more.
TYPE_WEIGHTS: dict[str, tuple[float, float, float]] = {"graded": (1.0, 3.0, 8.0), "flat": (1.0, 1.0, 1.0)}
TYPE_CONFIDENCE = dict(zip(TYPE_NAMES, TYPE_WEIGHTS["graded"], strict=True))
MIN_USER_ITEMS = 3  # distinct items a user needs to give a test and a validation event
# Validation users scored per candidate (a seeded sample past this): at most 5,000, fewer
# on large catalogues (10^8 scores), never fewer than 1,000.
EVAL_USERS_MAX, EVAL_USERS_MIN, EVAL_SCORES_MAX = 5_000, 1_000, 100_000_000
EVAL_SCORE_BLOCK = 1 << 24  # scores (users × items) per block of the evaluation
GRID_ENTRIES_MAX = 2_000_000  # train pairs for the grid; past this, a sample of users
SIGNIFICANCE_Z = 2.0  # a candidate must beat popularity by this many standard errors


@dataclass(frozen=True)
class TrainConfig:
    """What the selection tries; the defaults are the grid documented in docs/training.md."""

    als: tuple[AlsConfig, ...] = (
        AlsConfig(factors=32, regularization=0.1, alpha=4.0),
        AlsConfig(factors=64, regularization=1.0, alpha=4.0),
        AlsConfig(factors=64, regularization=10.0, alpha=10.0),
    )
    als_weights: tuple[str, ...] = ("graded", "flat")
    svd: tuple[SvdConfig, ...] = (
        SvdConfig(rank=32),
        SvdConfig(rank=64),
        SvdConfig(rank=128, popularity_damping=0.25),
    )
    # (user_weight, history_weight) of the served user vector (scoring.user_vectors)
    modes: tuple[tuple[float, float], ...] = ((1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    # popularity blend: bias = beta * log(1 + count), beta relative to the score scale
    betas: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0)
    min_user_items: int = MIN_USER_ITEMS
    time_budget_s: float = 60.0  # the grid stops starting new candidates past this
    seed: int = 11


# --- data on a dense index ----------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Interactions on dense indices, sorted by user, then time, then arrival."""

    user_ids: np.ndarray  # dense user → catalogue id (sorted)
    item_ids: np.ndarray  # dense item → catalogue id (sorted)
    users: np.ndarray  # int32
    items: np.ndarray  # int32
    kinds: np.ndarray  # int8: index into TYPE_NAMES

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


# --- served models and their evaluation --------------------------------------------------


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
        return {
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


# --- candidates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A way to fit a model on a split's events; ``mode`` and ``beta`` are how it is served."""

    family: str  # als, svd, popularity
    als: AlsConfig | None = None
    weights: str = "graded"
    svd: SvdConfig | None = None
    mode: tuple[float, float] = (1.0, 1.0)
    beta: float = 0.0  # absolute weight of log(1 + count) in the score

    def label(self) -> str:
        if self.family == "popularity":
            return "popularity"
        base = f"als {self.als.label()} weights={self.weights}" if self.als else ""
        if self.svd:
            base = f"svd {self.svd.label()}"
        return f"{base} user*{self.mode[0]:g}+history*{self.mode[1]:g} +{self.beta:.3g}*log(pop)"

    def fit(
        self,
        ds: Dataset,
        mask: np.ndarray,
        svd_cache: dict[float, np.ndarray] | None = None,
        svd_rank: int = 0,
    ) -> ServedModel:
        """``svd_cache``: SVD factors by damping, shared by candidates on the same mask (a
        lower rank is the leading columns of a higher one); ``svd_rank``: rank to compute."""
        by_user, by_item = pair_matrices(ds, mask, self.weights)
        pop = popularity_model(by_user, ds.n_items)
        if self.family == "popularity":
            return pop
        if self.als is not None:
            user_emb, item_emb = train_als(by_user, by_item, self.als)
        else:
            assert self.svd is not None
            cache = {} if svd_cache is None else svd_cache
            damping = self.svd.popularity_damping
            if damping not in cache or cache[damping].shape[1] < self.svd.rank:
                config = replace(self.svd, rank=max(self.svd.rank, svd_rank))
                cache[damping] = svd_item_factors(by_user, ds.n_items, config)
            item_emb = np.ascontiguousarray(cache[damping][:, : self.svd.rank])
            user_emb = mean_item_vectors(by_user, item_emb)
        return ServedModel(item_emb, user_emb, self.beta * pop.item_bias, *self.mode)


@dataclass
class Tried:
    label: str
    val_hit: float  # best over its modes and blends
    val_hit_unblended: float
    chosen_mode: tuple[float, float]
    beta: float
    fit_s: float
    significant: bool = False


@dataclass
class Selection:
    chosen: Candidate
    reason: str
    val_hit: float
    val_hit_popularity: float
    val_users: int
    tried: list[Tried] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _grid_mask(ds: Dataset, split: Split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The train mask and validation users for the grid: a sample of users on big data."""
    entries = int(split.train.sum())
    if entries <= GRID_ENTRIES_MAX:
        return split.train, np.arange(len(split.val_users))
    rng = np.random.default_rng(seed)
    share = GRID_ENTRIES_MAX / entries
    kept_users = rng.random(ds.n_users) < share
    log.info("grid on a sample of %.0f %% of the users (%d train events)", 100 * share, entries)
    return split.train & kept_users[ds.users], np.flatnonzero(kept_users[split.val_users])


def eval_set(ds: Dataset, mask: np.ndarray, users: np.ndarray, truth_pos: np.ndarray, length: int) -> EvalSet:
    return EvalSet(users, recent_items(ds, mask, users, length), ds.items[truth_pos].astype(np.int64))


def select(ds: Dataset, split: Split, config: TrainConfig, k: int, history_length: int) -> Selection:
    """Every candidate fitted on the train split and scored on the validation events; the
    best that beats popularity significantly, else popularity itself."""
    started = time.monotonic()
    mask, rows = _grid_mask(ds, split, config.seed)
    most = min(EVAL_USERS_MAX, max(EVAL_USERS_MIN, EVAL_SCORES_MAX // max(ds.n_items, 1)))
    if len(rows) > most:
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, most, replace=False))
    ev = eval_set(ds, mask, split.val_users[rows], split.val_pos[rows], history_length)
    by_user, _ = pair_matrices(ds, mask, "graded")
    pop = popularity_model(by_user, ds.n_items)
    pop_hits = hits(pop, ev, k)
    pop_rate = float(pop_hits.mean()) if len(pop_hits) else 0.0
    popularity = Candidate("popularity")
    tried = [Tried("popularity", pop_rate, pop_rate, (0.0, 0.0), math.inf, 0.0)]
    best: tuple[float, Candidate, Tried] | None = None
    skipped: list[str] = []
    bases = [Candidate("svd", svd=s) for s in config.svd] + [
        Candidate("als", als=a, weights=w) for w in config.als_weights for a in config.als
    ]
    pop_std = float(np.std(pop.item_bias)) or 1.0
    svd_cache: dict[float, np.ndarray] = {}
    svd_ranks: dict[float, int] = {}
    for svd in config.svd:
        svd_ranks[svd.popularity_damping] = max(svd.rank, svd_ranks.get(svd.popularity_damping, 0))
    for base in bases:
        if time.monotonic() - started > config.time_budget_s:
            skipped.append(f"{base.label().split(' user*')[0]}: time budget")
            continue
        t0 = time.monotonic()
        fitted = base.fit(
            ds, mask, svd_cache, svd_ranks.get(base.svd.popularity_damping, 0) if base.svd else 0
        )
        fit_s = time.monotonic() - t0
        by_mode = []
        for mode in config.modes:
            model = replace(fitted, user_weight=mode[0], history_weight=mode[1])
            no_bias = np.zeros(ds.n_items, dtype=np.float32)
            by_mode.append((float(hit_table(model, ev, k, [no_bias])[0].mean()), mode, model))
        plain, mode, model = max(by_mode, key=lambda m: m[0])
        scale = score_scale(model, ev) / pop_std
        betas = [rel * scale for rel in config.betas]
        table = hit_table(model, ev, k, [beta * pop.item_bias for beta in betas])
        results = [(float(h.mean()), beta, h) for beta, h in zip(betas, table, strict=True)]
        rate, beta, h = max(results, key=lambda r: r[0])
        entry = Tried(base.label().split(" user*")[0], rate, plain, mode, beta, fit_s, beats(h, pop_hits))
        tried.append(entry)
        log.info("%s: validation hit@%d %.4f (popularity %.4f)", entry.label, k, rate, pop_rate)
        if entry.significant and (best is None or rate > best[0]):
            best = (rate, replace(base, mode=mode, beta=beta), entry)
    if best is None:
        top = max(tried[1:], key=lambda t: t.val_hit, default=None)
        why = (
            "no candidate beats popularity significantly on the validation split"
            + (f" (best: {top.label} at {top.val_hit:.4f})" if top else "")
            + (f"; {len(skipped)} of {len(bases)} not tried within the time budget" if skipped else "")
            + ": writing the popularity model"
        )
        return Selection(popularity, why, pop_rate, pop_rate, len(ev.users), tried, skipped)
    rate, chosen, entry = best
    why = (
        f"highest validation hit@{k} among candidates beating popularity by more than "
        f"{SIGNIFICANCE_Z:g} standard errors (paired)"
    )
    return Selection(chosen, why, rate, pop_rate, len(ev.users), tried, skipped)


# --- the model repository -----------------------------------------------------------------


def scheduling_block(priority_levels: int) -> str:
    """The dynamic_batching lines for ``priority_levels`` (none for 0). Requests without a
    priority take the lowest level; a per-request timeout may shorten the queue wait."""
    if priority_levels <= 0:
        return ""
    return (
        f"\n  priority_levels: {priority_levels}"
        f"\n  default_priority_level: {priority_levels}"
        "\n  default_queue_policy { allow_timeout_override: true, timeout_action: REJECT }"
    )


def write_model_repository(
    arrays: Mapping[str, np.ndarray],
    repository: Path,
    model_name: str = "recommender",
    top_k: int = 10,
    history_length: int = 16,
    max_batch_size: int = 256,
    priority_levels: int = 0,
) -> int:
    """Write the next version of the model (``arrays``: embeddings.npz, see scoring.py);
    returns the version number written.

    ``priority_levels`` > 0 gives Triton's queue that many levels (lanes' ``triton_priority``
    then orders requests inside Triton too); 0 leaves the queue plain (see config.pbtxt)."""
    model_dir = repository / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version = max(versions, default=0) + 1
    version_dir = model_dir / str(version)
    version_dir.mkdir()
    for name, source in serving_code().items():
        shutil.copy(source, version_dir / name)
    np.savez(version_dir / "embeddings.npz", **arrays)  # type: ignore[arg-type]
    config = (TEMPLATE_DIR / "config.pbtxt").read_text()
    config = (
        config.replace("{{name}}", model_name)
        .replace("{{top_k}}", str(top_k))
        .replace("{{history_length}}", str(history_length))
        .replace("{{max_batch_size}}", str(max_batch_size))
        .replace("{{scheduling}}", scheduling_block(priority_levels))
    )
    (model_dir / "config.pbtxt").write_text(config)
    return version


# --- the whole run ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainReport:
    version: int | None
    train_events: int
    test_users: int
    hit_rate_model: float
    hit_rate_popularity: float
    summary: dict[str, Any] = field(default_factory=dict)


def train_log(
    interactions: InteractionLog,
    repository: Path | None,
    catalogue_items: np.ndarray | None = None,
    config: TrainConfig = TrainConfig(),
    top_k: int = 10,
    history_length: int = 16,
    model_name: str = "recommender",
    priority_levels: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TrainReport:
    """Select, refit on train + validation, score on test, write (``repository`` None: no
    write). The summary is what ``pipeline train`` prints."""
    say = progress or log.info
    started = time.monotonic()
    summary: dict[str, Any] = {"input": interactions.summary()}
    if len(interactions) == 0:
        summary["error"] = "no interactions to train on"
        summary["version"] = None
        return TrainReport(None, 0, 0, 0.0, 0.0, summary)
    ds = build_dataset(interactions, catalogue_items)
    split = split_by_time(ds, config.min_user_items)
    summary["data"] = {
        "interactions": len(ds),
        "users": ds.n_users,
        "items": ds.n_items,
        "max_item_id": int(ds.item_ids[-1]),
        "max_user_id": int(ds.user_ids[-1]),
        "users_with_held_out_events": len(split.val_users),
        "train_events": int(split.train.sum()),
        "train_and_validation_events": int(split.fit.sum()),
    }
    say(f"{len(ds)} interactions, {ds.n_users} users, {ds.n_items} items; selecting")
    if len(split.val_users) == 0:
        chosen = Candidate("popularity")
        selection = Selection(
            chosen,
            f"no user has {config.min_user_items} distinct items: cannot validate, popularity",
            0,
            0,
            0,
        )
    else:
        selection = select(ds, split, config, top_k, history_length)
    select_s = time.monotonic() - started
    say(f"chose {selection.chosen.label()} ({selection.reason}); refitting on train + validation")
    model = selection.chosen.fit(ds, split.fit)
    pop = popularity_model(pair_matrices(ds, split.fit, "graded")[0], ds.n_items)
    rows = np.arange(len(split.val_users))
    most = max(EVAL_USERS_MIN, 2 * EVAL_SCORES_MAX // max(ds.n_items, 1))
    if len(rows) > most:  # a seeded sample on big data
        rows = np.sort(np.random.default_rng(config.seed + 1).choice(rows, most, replace=False))
    test = eval_set(ds, split.fit, split.val_users[rows], split.test_pos[rows], history_length)
    model_hits, pop_hits = hits(model, test, top_k), hits(pop, test, top_k)
    hit_model = float(model_hits.mean()) if len(model_hits) else 0.0
    hit_pop = float(pop_hits.mean()) if len(pop_hits) else 0.0
    version = None
    if repository is not None:
        version = write_model_repository(
            model.arrays(ds), repository, model_name, top_k, history_length, priority_levels=priority_levels
        )
    summary["candidates"] = [
        {
            "candidate": t.label,
            f"val_hit@{top_k}": round(t.val_hit, 5),
            f"val_hit@{top_k}_unblended": round(t.val_hit_unblended, 5),
            "user_weight": t.chosen_mode[0],
            "history_weight": t.chosen_mode[1],
            "popularity_beta": None if math.isinf(t.beta) else round(t.beta, 5),
            "beats_popularity_significantly": t.significant,
            "fit_s": round(t.fit_s, 2),
        }
        for t in selection.tried
    ]
    if selection.skipped:
        summary["candidates_skipped"] = selection.skipped
    summary["chosen"] = {
        "candidate": selection.chosen.label(),
        "why": selection.reason,
        f"val_hit@{top_k}": round(selection.val_hit, 5),
        f"val_hit@{top_k}_popularity": round(selection.val_hit_popularity, 5),
        "validation_users": selection.val_users,
    }
    summary["test"] = {
        "users": len(test.users),
        f"hit@{top_k}_model": round(hit_model, 5),
        f"hit@{top_k}_popularity": round(hit_pop, 5),
        "model_is_popularity": selection.chosen.family == "popularity",
    }
    summary["timing_s"] = {"select": round(select_s, 2), "total": round(time.monotonic() - started, 2)}
    summary["version"] = version
    summary["repository"] = str(repository / model_name) if repository is not None and version else None
    return TrainReport(version, int(split.fit.sum()), len(test.users), hit_model, hit_pop, summary)


def train_and_write(
    events: Iterable[Mapping[str, object]],
    repository: Path,
    n_users: int = 0,
    n_items: int = 0,
    config: TrainConfig = TrainConfig(),
    top_k: int = 10,
    history_length: int = 16,
    model_name: str = "recommender",
    priority_levels: int = 0,
) -> TrainReport:
    """Event dicts in, the next model version written. ``n_items`` > 0: item ids 0..n-1
    are all in the catalogue (served) even if no event names them; ``n_users`` is unused
    (a user without events is served from its history)."""
    del n_users
    interactions = from_events(events)
    catalogue = np.arange(n_items, dtype=np.int64) if n_items > 0 else None
    return train_log(
        interactions, repository, catalogue, config, top_k, history_length, model_name, priority_levels
    )


# --- helpers on event dicts (tests and notebooks) -------------------------------------------


@dataclass(frozen=True)
class HoldoutSplit:
    train: list[Mapping[str, object]]
    test: list[Mapping[str, object]]  # the last event of each user, if it is a new item


def holdout_last(events: Sequence[Mapping[str, object]]) -> HoldoutSplit:
    """Hold out every user's last interaction with an item they had not met before."""
    last: dict[int, int] = {}
    for idx, ev in enumerate(events):
        last[int(ev["user_id"])] = idx  # type: ignore[call-overload]
    held = set(last.values())
    train = [ev for idx, ev in enumerate(events) if idx not in held]
    seen: dict[int, set[int]] = {}
    for ev in train:
        seen.setdefault(int(ev["user_id"]), set()).add(int(ev["item_id"]))  # type: ignore[call-overload]
    test = [
        events[idx]
        for idx in sorted(held)
        if int(events[idx]["item_id"]) not in seen.get(int(events[idx]["user_id"]), set())  # type: ignore[call-overload]
    ]
    return HoldoutSplit(train, test)


def recent_history(events: Iterable[Mapping[str, object]], length: int) -> dict[int, list[int]]:
    """Each user's most recent distinct items, newest last (the pipeline's request shape)."""
    history: dict[int, list[int]] = {}
    for ev in events:
        items = history.setdefault(int(ev["user_id"]), [])  # type: ignore[call-overload]
        item = int(ev["item_id"])  # type: ignore[call-overload]
        if item in items:
            items.remove(item)
        items.append(item)
        del items[:-length]
    return history


def history_matrix(users: list[int], history: Mapping[int, list[int]], length: int) -> np.ndarray:
    out = np.full((len(users), length), scoring.HISTORY_PAD, dtype=np.int64)
    for row, user in enumerate(users):
        items = history.get(user, [])[-length:]
        out[row, : len(items)] = items
    return out


def hit_rate(recommended: np.ndarray, truth: np.ndarray) -> float:
    return float((recommended == truth[:, None]).any(axis=1).mean()) if len(truth) else 0.0


def popularity_top_k(
    train: Iterable[Mapping[str, object]], history: np.ndarray, n_items: int, k: int
) -> np.ndarray:
    """The most-popular baseline on catalogue ids: the k most frequent training items the
    user has not met (in ``history``). Memory ~ distinct items, whatever the ids."""
    del n_items  # kept for callers; the catalogue is the training items
    ids = np.asarray([int(ev["item_id"]) for ev in train], dtype=np.int64)  # type: ignore[call-overload]
    catalogue, counts = np.unique(ids, return_counts=True)
    model = scoring.Recommender(
        {
            "item_ids": catalogue,
            "item_emb": np.zeros((len(catalogue), 1), dtype=np.float32),
            "user_emb": np.zeros((0, 1), dtype=np.float32),
            "item_bias": counts.astype(np.float32),
        }
    )
    found, _ = model.recommend(np.full(len(history), -1), history, k)
    return found
