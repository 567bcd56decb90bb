"""The served model is a real recommender: on held-out synthetic events it beats the
most-popular baseline on hit rate at 10, asked through Triton itself."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pipeline.devstack.stack import TRAINING_EVENTS
from pipeline.recsys import train
from pipeline.recsys.generator import EventGenerator, GeneratorConfig

pytestmark = pytest.mark.integration
HISTORY = 16
K = 10


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
    split = train.holdout_last(events)
    users = [int(e["user_id"]) for e in split.test]
    truth = np.asarray([int(e["item_id"]) for e in split.test])
    history = train.history_matrix(users, train.recent_history(split.train, HISTORY), HISTORY)

    served = served_top_k(stack.triton.grpc_url, users, history)
    popular = train.popularity_top_k(split.train, history, GeneratorConfig().items, K)

    assert len(truth) > 500
    assert not (served[:, :, None] == np.where(history < 0, -2, history)[:, None, :]).any(), (
        "served a history item"
    )
    model_hr, popular_hr = train.hit_rate(served, truth), train.hit_rate(popular, truth)
    print(f"hit@10 served model {model_hr:.3f} vs most-popular {popular_hr:.3f}")
    assert model_hr > 2 * popular_hr
