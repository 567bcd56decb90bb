"""Training on real data, the whole run: the interactions on a dense index
(recsys/dataset.py), candidates chosen by validation hit rate against the most-popular
baseline (recsys/selection.py, recsys/evaluation.py), the chosen one refitted on train +
validation and scored on test, and the next version of the Triton model repository
written (recsys/repository.py). Instead of the chosen one, the run may write the baseline
itself or a deliberately bad (random) version, for experiments between versions.

See docs/training.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.recsys.data import InteractionLog, from_events
from pipeline.recsys.dataset import Dataset, Split, build_dataset, pair_matrices, split_by_time
from pipeline.recsys.evaluation import (
    EVAL_SCORES_MAX,
    EVAL_USERS_MIN,
    ServedModel,
    eval_set,
    hits,
    popularity_model,
)
from pipeline.recsys.repository import (
    loaded_versions,
    model_versions,
    scheduling_block,
    serving_code,
    write_model_repository,
)
from pipeline.recsys.selection import Candidate, Selection, TrainConfig, Tried, select

# serving_code and scheduling_block are used from here by pipeline/devstack and scripts/.
__all__ = [
    "KINDS",
    "TrainConfig",
    "TrainReport",
    "scheduling_block",
    "serving_code",
    "train_and_write",
    "train_log",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    version: int | None
    train_events: int
    test_users: int
    hit_rate_model: float
    hit_rate_popularity: float
    summary: dict[str, Any] = field(default_factory=dict)


KINDS = ("best", "popularity", "random")  # what a run writes: see _written_model
RANDOM_FACTORS = 8


def random_model(ds: Dataset, seed: int) -> ServedModel:
    """A deliberately bad version on the same catalogue and users: random embeddings and bias
    (seeded), to try a guarded rollout on (its arm should be stopped)."""
    rng = np.random.default_rng(seed)
    return ServedModel(
        item_emb=rng.normal(0, 1, (ds.n_items, RANDOM_FACTORS)).astype(np.float32),
        user_emb=rng.normal(0, 1, (ds.n_users, RANDOM_FACTORS)).astype(np.float32),
        item_bias=rng.normal(0, 1, ds.n_items).astype(np.float32),
    )


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
    kind: str = "best",
    keep_versions: Collection[int] | None = None,
) -> TrainReport:
    """Select (``kind`` best; popularity or random: no selection), refit on train +
    validation, score on test, write (``repository`` None: no write) with a version policy
    loading ``keep_versions`` and the version written (None: every version). The summary is
    what ``pipeline train`` prints."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    say = progress or log.info
    started = time.monotonic()
    summary: dict[str, Any] = {"input": interactions.summary(), "kind": kind}
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
    pop = popularity_model(pair_matrices(ds, split.fit, "graded")[0], ds.n_items)
    selection: Selection | None = None
    if kind == "best":
        say(f"{len(ds)} interactions, {ds.n_users} users, {ds.n_items} items; selecting")
        selection = _select(ds, split, config, top_k, history_length)
        say(f"chose {selection.chosen.label()} ({selection.reason}); refitting on train + validation")
        model = selection.chosen.fit(ds, split.fit)
    else:  # the baseline or a bad version, as asked: no selection
        model = pop if kind == "popularity" else random_model(ds, config.seed)
    select_s = time.monotonic() - started
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
            model.arrays(ds),
            repository,
            model_name,
            top_k,
            history_length,
            priority_levels=priority_levels,
            keep_versions=keep_versions,
        )
    if selection is not None:
        summary["candidates"] = [_tried_row(t, top_k) for t in selection.tried]
        if selection.skipped:
            summary["candidates_skipped"] = selection.skipped
        summary["chosen"] = {
            "candidate": selection.chosen.label(),
            "why": selection.reason,
            f"val_hit@{top_k}": round(selection.val_hit, 5),
            f"val_hit@{top_k}_popularity": round(selection.val_hit_popularity, 5),
            "validation_users": selection.val_users,
        }
    else:
        summary["chosen"] = {"candidate": kind, "why": f"--kind {kind}: written as asked, no selection"}
    summary["test"] = {
        "users": len(test.users),
        f"hit@{top_k}_model": round(hit_model, 5),
        f"hit@{top_k}_popularity": round(hit_pop, 5),
        "model_is_popularity": kind == "popularity"
        or (selection is not None and selection.chosen.family == "popularity"),
    }
    # The written version's held-out hit rate; null when no user had held-out events.
    summary[f"hit@{top_k}"] = round(hit_model, 5) if len(test.users) else None
    summary["timing_s"] = {"select": round(select_s, 2), "total": round(time.monotonic() - started, 2)}
    summary["version"] = version
    summary["repository"] = str(repository / model_name) if repository is not None and version else None
    if repository is not None and version is not None:
        model_dir = repository / model_name
        summary["loaded_versions"] = loaded_versions(model_versions(model_dir), version, keep_versions)
    return TrainReport(version, int(split.fit.sum()), len(test.users), hit_model, hit_pop, summary)


def _select(ds: Dataset, split: Split, config: TrainConfig, top_k: int, history_length: int) -> Selection:
    """The selection; popularity when no user has held-out events to validate on."""
    if len(split.val_users) == 0:
        return Selection(
            Candidate("popularity"),
            f"no user has {config.min_user_items} distinct items: cannot validate, popularity",
            0,
            0,
            0,
        )
    return select(ds, split, config, top_k, history_length)


def _tried_row(t: Tried, top_k: int) -> dict[str, Any]:
    """One candidate of the selection as the summary shows it."""
    return {
        "candidate": t.label,
        f"val_hit@{top_k}": round(t.val_hit, 5),
        f"val_hit@{top_k}_unblended": round(t.val_hit_unblended, 5),
        "user_weight": t.chosen_mode[0],
        "history_weight": t.chosen_mode[1],
        "popularity_beta": None if math.isinf(t.beta) else round(t.beta, 5),
        "beats_popularity_significantly": t.significant,
        "fit_s": round(t.fit_s, 2),
    }


def train_and_write(
    events: Iterable[Mapping[str, object]],
    repository: Path,
    n_items: int = 0,
    config: TrainConfig = TrainConfig(),
    top_k: int = 10,
    history_length: int = 16,
    model_name: str = "recommender",
    priority_levels: int = 0,
    kind: str = "best",
    keep_versions: Collection[int] | None = None,
) -> TrainReport:
    """Event dicts in, the next model version written. ``n_items`` > 0: item ids 0..n-1
    are all in the catalogue (served) even if no event names them."""
    interactions = from_events(events)
    catalogue = np.arange(n_items, dtype=np.int64) if n_items > 0 else None
    return train_log(
        interactions,
        repository,
        catalogue,
        config,
        top_k,
        history_length,
        model_name,
        priority_levels,
        kind=kind,
        keep_versions=keep_versions,
    )
