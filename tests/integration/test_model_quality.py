"""The served model is a real recommender: on held-out synthetic events it beats the
most-popular baseline on hit rate at 10, asked through Triton itself."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pipeline.devstack.stack import TRAINING_EVENTS
from pipeline.recsys import scoring
from pipeline.recsys.generator import EventGenerator, GeneratorConfig

pytestmark = pytest.mark.integration
HISTORY = 16
K = 10


# --- the held-out split and the baseline, on event dicts ---------------------------------


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


def popularity_top_k(train: Iterable[Mapping[str, object]], history: np.ndarray, k: int) -> np.ndarray:
    """The most-popular baseline on catalogue ids: the k most frequent training items the
    user has not met (in ``history``); the catalogue is the training items."""
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


def served_top_k(url: str, users: list[int], history: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    out = []
    for start in range(0, len(users), 128):
        u = np.asarray(users[start : start + 128], dtype=np.int64).reshape(-1, 1)
        h = history[start : start + 128]
        inputs = [
            grpcclient.InferInput("USER_ID", list(u.shape), "INT64"),
            grpcclient.InferInput("HISTORY", list(h.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(u)
        inputs[1].set_data_from_numpy(h)
        result = client.infer("recommender", inputs)
        out.append(result.as_numpy("ITEM_IDS"))
    client.close()
    return np.concatenate(out)


def test_served_model_beats_popularity_on_held_out_events(stack) -> None:
    # The session's model was trained by ensure_model on exactly these events' training split.
    events = list(EventGenerator(GeneratorConfig()).events(TRAINING_EVENTS))
    split = holdout_last(events)
    users = [int(e["user_id"]) for e in split.test]
    truth = np.asarray([int(e["item_id"]) for e in split.test])
    history = history_matrix(users, recent_history(split.train, HISTORY), HISTORY)

    served = served_top_k(stack.triton.grpc_url, users, history)
    popular = popularity_top_k(split.train, history, K)

    assert len(truth) > 500
    assert not (served[:, :, None] == np.where(history < 0, -2, history)[:, None, :]).any(), (
        "served a history item"
    )
    model_hr, popular_hr = hit_rate(served, truth), hit_rate(popular, truth)
    print(f"hit@10 served model {model_hr:.3f} vs most-popular {popular_hr:.3f}")
    assert model_hr > 2 * popular_hr
