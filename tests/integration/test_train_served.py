"""`pipeline train` on a ratings file of a user's own shape (its column names, ratings for
event types, timestamps in seconds, item ids sparse up to 10^6): the chosen model beats
most-popular on the held-out split, and a real Triton serves the written version with the
catalogue's ids (ITEM_IDS are catalogue ids, history excluded, unknown items refused)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient

from pipeline.devstack.triton import EmbeddedTriton
from pipeline.recsys.data import NOT_AN_ID
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration

HISTORY = 16
RATING = {"view": 3.0, "click": 4.0, "purchase": 5.0}
MAPPING = """\
user: userId
item: movieId
timestamp: {column: timestamp, unit: s}
type:
  thresholds: {column: rating, at_least: {purchase: 4.5, click: 3.5, view: 2.5}, otherwise: skip}
event_id: null
"""


def write_ratings(path: Path, events: int = 60_000, seed: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of ratings with taste structure; returns the item ids rated and the user ids."""
    config = GeneratorConfig(users=600, items=4000, clusters=12, seed=seed)
    rng = np.random.default_rng(seed)
    item_ids = rng.choice(10**6, size=config.items, replace=False)  # sparse, up to 10^6
    user_ids = rng.choice(10**9, size=config.users, replace=False)
    lines = ["userId,movieId,rating,timestamp"]
    rated = set()
    for n, ev in enumerate(EventGenerator(config).events(events)):
        user, item = user_ids[int(ev["user_id"])], item_ids[int(ev["item_id"])]  # type: ignore[call-overload]
        rated.add(int(item))
        lines.append(f"{user},{item},{RATING[str(ev['type'])]},{1_500_000_000 + n}")
    lines.append(f"{user_ids[0]},{item_ids[0]},1.0,1600000000")  # below every threshold: skipped
    lines.append(f"-5,{item_ids[0]},4.0,1600000001")  # not a user id: skipped ("oops" would be one)
    path.write_text("\n".join(lines) + "\n")
    return np.asarray(sorted(rated), dtype=np.int64), user_ids


def infer(
    client: grpcclient.InferenceServerClient, users: np.ndarray, history: np.ndarray, *also: str
) -> list[np.ndarray]:
    """ITEM_IDS, then each output named in ``also``."""
    inputs = [
        grpcclient.InferInput("USER_ID", [len(users), 1], "INT64"),
        grpcclient.InferInput("HISTORY", list(history.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(users.reshape(-1, 1).astype(np.int64))
    inputs[1].set_data_from_numpy(history.astype(np.int64))
    names = ["ITEM_IDS", *also]
    outputs = [grpcclient.InferRequestedOutput(name) for name in names]
    result = client.infer("movies", inputs, outputs=outputs)
    arrays = [result.as_numpy(name) for name in names]
    assert all(a is not None for a in arrays)
    return arrays  # type: ignore[return-value]


def test_trained_on_a_ratings_file_and_served_with_catalogue_ids(tmp_path: Path) -> None:
    ratings, mapping, repository = tmp_path / "ratings.csv", tmp_path / "movies.yaml", tmp_path / "repo"
    item_ids, user_ids = write_ratings(ratings)
    mapping.write_text(MAPPING)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            "--file",
            str(ratings),
            "--mapping",
            str(mapping),
            "--out",
            str(repository),
            "--name",
            "movies",
            "--history-length",
            str(HISTORY),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(done.stdout.splitlines()[-1])
    print(orjson.dumps({k: summary[k] for k in ("input", "data", "chosen", "test", "timing_s")}).decode())
    assert summary["input"]["skipped_reasons"] == {
        "skipped by the mapping": 1,
        NOT_AN_ID.format("user_id"): 1,
    }
    assert summary["data"]["max_item_id"] > 900_000 and summary["version"] == 1
    assert not summary["test"]["model_is_popularity"], summary["chosen"]
    assert summary["test"]["hit@10_model"] > summary["test"]["hit@10_popularity"]

    triton = EmbeddedTriton(tmp_path, repository)
    with triton.running(triton.ready, 180):
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            rng = np.random.default_rng(4)
            history = np.full((32, HISTORY), -1, dtype=np.int64)
            for row in range(32):
                n = row % HISTORY
                history[row, :n] = rng.choice(item_ids, size=n, replace=False)
            users = np.concatenate([user_ids[:24], [10**15 + i for i in range(8)]])  # 8 unknown users
            [served] = infer(client, users, history)
            assert served.shape == (32, 10)
            assert np.isin(served, item_ids).all(), "ITEM_IDS that are not catalogue ids"
            assert served.max() > 10_000  # catalogue ids, not dense indices
            for row in range(32):
                assert not set(served[row].tolist()) & set(history[row][history[row] >= 0].tolist())
            unknown = history[:1].copy()
            unknown[0, 0] = int(np.setdiff1d(np.arange(10**6 + 5), item_ids)[-1])  # not in the catalogue
            as_if_empty = history[:1].copy()
            as_if_empty[0, 0] = -1
            answered, counted = infer(client, user_ids[:1], unknown, "UNKNOWN_ITEMS")
            assert counted.tolist() == [[1]]  # ignored, not refused, and reported
            assert answered.tolist() == infer(client, user_ids[:1], as_if_empty)[0].tolist()
        finally:
            client.close()
