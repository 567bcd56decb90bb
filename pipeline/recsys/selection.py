"""The selection grid: candidates (ALS, SVD, each with its served user vector and
popularity blend) fitted on the train split and scored on the validation events; one must
beat popularity significantly to be chosen (docs/training.md)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.recsys.dataset import MIN_USER_ITEMS, Dataset, Split, pair_matrices
from pipeline.recsys.evaluation import (
    EVAL_SCORES_MAX,
    EVAL_USERS_MAX,
    EVAL_USERS_MIN,
    SIGNIFICANCE_Z,
    ServedModel,
    beats,
    eval_set,
    hit_table,
    hits,
    popularity_model,
    score_scale,
)
from pipeline.recsys.models import AlsConfig, SvdConfig, mean_item_vectors, svd_item_factors, train_als

log = logging.getLogger(__name__)

GRID_ENTRIES_MAX = 2_000_000  # train pairs for the grid; past this, a sample of users


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
