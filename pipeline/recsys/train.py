"""Implicit matrix factorisation (alternating least squares, Hu-Koren-Volinsky) in numpy,
an offline hit-rate evaluation against a most-popular baseline, and the writer of a
versioned Triton model repository."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.recsys import scoring

# Confidence per interaction: a purchase says more than a view.
TYPE_CONFIDENCE = {"view": 1.0, "click": 3.0, "purchase": 8.0}
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "recommender"


@dataclass(frozen=True)
class TrainConfig:
    factors: int = 32
    iterations: int = 8
    regularization: float = 0.1
    alpha: float = 4.0
    seed: int = 11


@dataclass
class Factors:
    user_emb: np.ndarray
    item_emb: np.ndarray


@dataclass(frozen=True)
class Interactions:
    users: np.ndarray
    items: np.ndarray
    confidence: np.ndarray
    n_users: int
    n_items: int


def to_interactions(
    events: Iterable[Mapping[str, object]], n_users: int = 0, n_items: int = 0
) -> Interactions:
    users, items, conf = [], [], []
    for ev in events:
        users.append(int(ev["user_id"]))  # type: ignore[call-overload]
        items.append(int(ev["item_id"]))  # type: ignore[call-overload]
        conf.append(TYPE_CONFIDENCE.get(str(ev.get("type")), 1.0))
    u, i = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    return Interactions(
        u,
        i,
        np.asarray(conf, dtype=np.float32),
        max(n_users, int(u.max()) + 1 if len(u) else 0),
        max(n_items, int(i.max()) + 1 if len(i) else 0),
    )


def _solve_rows(
    rows: np.ndarray,
    cols: np.ndarray,
    conf: np.ndarray,
    n_rows: int,
    other: np.ndarray,
    reg: float,
) -> np.ndarray:
    """One ALS half-step: for every row solve (YtY + Yt(C-1)Y + reg I) x = Yt C p."""
    factors = other.shape[1]
    gram = other.T @ other + reg * np.eye(factors, dtype=np.float64)
    order = np.argsort(rows, kind="stable")
    rows, cols, conf = rows[order], cols[order], conf[order]
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    out = np.zeros((n_rows, factors), dtype=np.float64)
    for r in range(n_rows):
        lo, hi = bounds[r], bounds[r + 1]
        if lo == hi:
            continue
        y = other[cols[lo:hi]]
        c = conf[lo:hi]
        a = gram + (y.T * (c - 1.0)) @ y
        out[r] = np.linalg.solve(a, y.T @ c)
    return out


def train_als(data: Interactions, config: TrainConfig = TrainConfig()) -> Factors:
    rng = np.random.default_rng(config.seed)
    # Repeated interactions add their confidence, as in the original paper.
    keys = data.users * data.n_items + data.items
    uniq, inverse = np.unique(keys, return_inverse=True)
    conf = 1.0 + config.alpha * np.bincount(inverse, weights=data.confidence)
    users, items = uniq // data.n_items, uniq % data.n_items
    user_emb = rng.normal(0, 0.01, (data.n_users, config.factors))
    item_emb = rng.normal(0, 0.01, (data.n_items, config.factors))
    for _ in range(config.iterations):
        user_emb = _solve_rows(users, items, conf, data.n_users, item_emb, config.regularization)
        item_emb = _solve_rows(items, users, conf, data.n_items, user_emb, config.regularization)
    return Factors(user_emb.astype(np.float32), item_emb.astype(np.float32))


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
    """The most-popular baseline: the k most frequent training items the user has not met."""
    counts = np.bincount([int(ev["item_id"]) for ev in train], minlength=n_items)  # type: ignore[call-overload]
    scores = np.tile(counts.astype(np.float32), (history.shape[0], 1))
    ids, _ = scoring.top_k(scores, np.eye(n_items, dtype=np.float32), history, k)
    return ids


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
    factors: Factors,
    repository: Path,
    model_name: str = "recommender",
    top_k: int = 10,
    history_length: int = 16,
    max_batch_size: int = 256,
    priority_levels: int = 0,
) -> int:
    """Write the next version of the model; returns the version number written.

    ``priority_levels`` > 0 gives Triton's queue that many levels (lanes' ``triton_priority``
    then orders requests inside Triton too); 0 leaves the queue plain (see config.pbtxt)."""
    model_dir = repository / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version = max(versions, default=0) + 1
    version_dir = model_dir / str(version)
    version_dir.mkdir()
    shutil.copy(TEMPLATE_DIR / "1" / "model.py", version_dir / "model.py")
    shutil.copy(Path(scoring.__file__), version_dir / "scoring.py")
    np.savez(version_dir / "embeddings.npz", user_emb=factors.user_emb, item_emb=factors.item_emb)
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


@dataclass(frozen=True)
class TrainReport:
    version: int
    train_events: int
    test_users: int
    hit_rate_model: float
    hit_rate_popularity: float


def train_and_write(
    events: Sequence[Mapping[str, object]],
    repository: Path,
    n_users: int = 0,
    n_items: int = 0,
    config: TrainConfig = TrainConfig(),
    top_k: int = 10,
    history_length: int = 16,
    model_name: str = "recommender",
    priority_levels: int = 0,
) -> TrainReport:
    """Train on all but each user's last event, score both recommenders offline on those
    held-out events, and write the model (trained on the training split only)."""
    split = holdout_last(events)
    data = to_interactions(split.train, n_users, n_items)
    factors = train_als(data, config)
    history = recent_history(split.train, history_length)
    users = [int(ev["user_id"]) for ev in split.test]  # type: ignore[call-overload]
    truth = np.asarray([int(ev["item_id"]) for ev in split.test], dtype=np.int64)  # type: ignore[call-overload]
    hist = history_matrix(users, history, history_length)
    vecs = scoring.user_vectors(np.asarray(users, dtype=np.int64), hist, factors.user_emb, factors.item_emb)
    model_ids, _ = scoring.top_k(vecs, factors.item_emb, hist, top_k)
    pop_ids = popularity_top_k(split.train, hist, data.n_items, top_k)
    version = write_model_repository(
        factors, repository, model_name, top_k, history_length, priority_levels=priority_levels
    )
    return TrainReport(
        version, len(split.train), len(split.test), hit_rate(model_ids, truth), hit_rate(pop_ids, truth)
    )
