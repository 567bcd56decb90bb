"""The trainer on real-shaped data: sparse catalogue ids on a dense index, the per-user time
split, popularity without an items × items matrix, a selection that never writes a model
worse than popularity, and the written version served by model.py with catalogue ids."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tracemalloc
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.recsys import scoring
from pipeline.recsys.cli import add_train_command
from pipeline.recsys.data import NOT_AN_ID, InteractionLog, from_file
from pipeline.recsys.dataset import build_dataset, pair_matrices, recent_items, split_by_time
from pipeline.recsys.evaluation import EvalSet, ServedModel, popularity_model, score_scale
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.models import AlsConfig, SvdConfig
from pipeline.recsys.selection import TrainConfig
from pipeline.recsys.train import train_log

SMALL = TrainConfig(
    als=(AlsConfig(factors=32, regularization=1.0, alpha=4.0, iterations=6),),
    als_weights=("graded",),
    svd=(SvdConfig(rank=32),),
)


def log_of(rows: list[tuple[int, int, int]], kind: int = 0) -> InteractionLog:
    """(user, item, ts) rows, all of one type."""
    out = InteractionLog()
    a = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    out.add_arrays(a[:, 0], a[:, 1], a[:, 2], np.full(len(a), kind))
    return out


def popularity_only(users: int = 600, items: int = 3000, per_user: int = 30, seed: int = 3) -> InteractionLog:
    """Every user draws items from one Zipf distribution: nothing beats most-popular."""
    rng = np.random.default_rng(seed)
    catalogue = np.sort(rng.choice(10**6, size=items, replace=False))  # sparse ids
    weights = 1.0 / np.arange(1, items + 1) ** 1.0
    draws = rng.choice(items, size=(users, per_user), p=weights / weights.sum())
    user_ids = rng.choice(10**9, size=users, replace=False)
    out = InteractionLog()
    out.add_arrays(
        np.repeat(user_ids, per_user),
        catalogue[rng.permutation(items)][draws.reshape(-1)],
        np.tile(np.arange(per_user), users) * 1000,
        rng.integers(0, 3, size=users * per_user),
    )
    return out


def structured(events: int = 40_000, sparse: bool = True) -> InteractionLog:
    """The synthetic generator's taste clusters, ids spread up to 10^6 and 10^12."""
    config = GeneratorConfig(users=500, items=1500, clusters=10, seed=5)
    out = InteractionLog()
    for ev in EventGenerator(config).events(events):
        if sparse:
            ev = {**ev, "item_id": int(ev["item_id"]) * 661 + 17, "user_id": int(ev["user_id"]) * 10**9 + 3}  # type: ignore[call-overload]
        out.add(ev)
    return out


def test_sparse_ids_map_to_a_dense_index_and_back() -> None:
    log = log_of([(10**12, 999_999, 1), (5, 3, 2), (5, 500_000, 3), (10**12, 3, 4)])
    ds = build_dataset(log)
    assert ds.user_ids.tolist() == [5, 10**12] and ds.item_ids.tolist() == [3, 500_000, 999_999]
    assert ds.users.tolist() == [0, 0, 1, 1]  # sorted by user, then time
    assert ds.item_ids[ds.items].tolist() == [3, 500_000, 999_999, 3]
    assert scoring.dense_index(ds.item_ids, np.array([999_999, 4, 3, -1])).tolist() == [2, -1, 0, -1]
    with_catalogue = build_dataset(log, np.arange(5))
    assert with_catalogue.item_ids.tolist() == [0, 1, 2, 3, 4, 500_000, 999_999]


def test_split_holds_out_each_users_last_two_new_items() -> None:
    # user 1 meets a, b, a, c, d, b: test d (the last new item), validation c, train a b a;
    # the b after d is neither (it comes after the test event). user 2 has two items only.
    a, b, c, d = 100, 200, 300, 400
    ds = build_dataset(
        log_of([(1, a, 1), (1, b, 2), (1, a, 3), (1, c, 4), (1, d, 5), (1, b, 6), (2, a, 1), (2, b, 2)])
    )
    split = split_by_time(ds, min_user_items=3)
    assert split.val_users.tolist() == [0]
    assert ds.item_ids[ds.items[split.val_pos]].tolist() == [c]
    assert ds.item_ids[ds.items[split.test_pos]].tolist() == [d]
    assert ds.item_ids[ds.items[split.train]].tolist() == [a, b, a, a, b]  # user 2 trains whole
    assert ds.item_ids[ds.items[split.fit]].tolist() == [a, b, a, c, a, b]
    hist = recent_items(ds, split.fit, np.array([0, 1]), 3)
    assert [[int(ds.item_ids[i]) if i >= 0 else -1 for i in row] for row in hist] == [[b, a, c], [a, b, -1]]


def test_popularity_needs_no_items_by_items_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np, "eye", lambda *a, **k: pytest.fail("an n_items × n_items matrix"))
    items = [10**9, 10**9, 10**9, 7, 7, 123_456]
    ds = build_dataset(log_of([(user, item, 0) for user, item in enumerate(items)]))
    by_user, _ = pair_matrices(ds, np.ones(len(ds), dtype=bool), "graded")
    served = scoring.Recommender(popularity_model(by_user, ds.n_items).arrays(ds))
    history = np.array([[10**9, -1], [-1, -1], [55, -1]])  # 55: unknown to training, ignored
    top, _ = served.recommend(np.full(len(history), -1), history, 2)
    assert top.tolist() == [[7, 123_456], [10**9, 7], [10**9, 7]]


def test_selection_writes_popularity_when_nothing_beats_it(tmp_path: Path) -> None:
    report = train_log(popularity_only(), tmp_path, config=SMALL)
    s = report.summary
    assert s["chosen"]["val_hit@10"] >= s["chosen"]["val_hit@10_popularity"]
    assert s["test"]["model_is_popularity"], s["chosen"]
    assert report.hit_rate_model == pytest.approx(report.hit_rate_popularity)
    with np.load(tmp_path / "recommender" / "1" / "embeddings.npz") as npz:
        assert not npz["item_emb"].any() and npz["item_bias"].any()  # zero embeddings + bias
        assert npz["item_ids"].max() > 10_000  # catalogue ids


def test_selection_beats_popularity_on_data_with_structure() -> None:
    report = train_log(structured(), None, config=SMALL)
    s = report.summary
    assert not s["test"]["model_is_popularity"], s["chosen"]
    assert s["chosen"]["val_hit@10"] > s["chosen"]["val_hit@10_popularity"]
    assert report.hit_rate_model > 1.5 * report.hit_rate_popularity, s["test"]
    assert {c["candidate"].split()[0] for c in s["candidates"]} == {"popularity", "svd", "als"}
    assert s["data"]["max_item_id"] > 900_000 and s["data"]["max_user_id"] > 10**11


def test_training_memory_is_bounded_by_the_data_not_the_ids() -> None:
    log = structured(events=30_000)
    users, items, _, _ = log.arrays()
    assert items.max() > 900_000 and users.max() > 10**11
    tracemalloc.start()
    try:
        train_log(log, None, config=SMALL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MiB"


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Error:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: _Error | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def _load_served_model(
    version_dir: Path, outputs: tuple[str, ...] = ("ITEM_IDS", "SCORES", "UNKNOWN_ITEMS")
) -> Any:
    """model.py of a written version, with a stand-in for Triton's pb_utils; ``outputs``:
    what its config declares."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = _Tensor  # type: ignore[attr-defined]
    fake.TritonError = _Error  # type: ignore[attr-defined]
    fake.InferenceResponse = _Response  # type: ignore[attr-defined]
    fake.get_input_tensor_by_name = lambda request, name: _Tensor(name, request[name])  # type: ignore[attr-defined]
    sys.modules["triton_python_backend_utils"] = fake
    sys.modules.pop("scoring", None)
    try:
        spec = importlib.util.spec_from_file_location("served_model", version_dir / "model.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        config = {"parameters": {"top_k": {"string_value": "10"}}, "output": [{"name": n} for n in outputs]}
        model.initialize(
            {
                "model_config": orjson.dumps(config).decode(),
                "model_repository": str(version_dir.parent),
                "model_version": version_dir.name,
            }
        )
        return model
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
        sys.modules.pop("scoring", None)
        sys.path.remove(str(version_dir))


def test_written_model_speaks_catalogue_ids(tmp_path: Path) -> None:
    log = structured(events=20_000)
    report = train_log(log, tmp_path, config=SMALL)
    assert report.version == 1
    model = _load_served_model(tmp_path / "recommender" / "1")
    users, items, _, _ = log.arrays()
    catalogue = set(items.tolist())
    known = [int(items[0]), int(items[1]), -1, -1]
    requests = [
        {"USER_ID": np.array([[users[0]], [123]]), "HISTORY": np.array([known, [-1] * 4])},  # known, new user
        {
            "USER_ID": np.array([[users[0]]]),
            "HISTORY": np.array([[int(items[0]), 5, -1, -1]]),
        },  # 5: not an id
    ]
    ok, with_unknown = model.execute(requests)
    assert with_unknown.error is None  # an unknown item is never refused: it is ignored, counted
    assert ok.outputs["UNKNOWN_ITEMS"].tolist() == [[0], [0]]
    assert with_unknown.outputs["UNKNOWN_ITEMS"].tolist() == [[1]]
    [as_if_empty] = model.execute(
        [{"USER_ID": np.array([[users[0]]]), "HISTORY": np.array([[int(items[0]), -1, -1, -1]])}]
    )
    assert with_unknown.outputs["ITEM_IDS"].tolist() == as_if_empty.outputs["ITEM_IDS"].tolist()
    ids = ok.outputs["ITEM_IDS"]
    assert ok.error is None and ids.shape == (2, 10) and ok.outputs["SCORES"].dtype == np.float32
    assert set(ids.reshape(-1).tolist()) <= catalogue
    assert not set(ids[0].tolist()) & set(known)  # history excluded


def test_a_config_without_the_unknown_items_output_gets_none(tmp_path: Path) -> None:
    """Versions written before UNKNOWN_ITEMS existed keep their config: the model answers
    without it (and still ignores unknown items)."""
    log = structured(events=5_000)
    train_log(log, tmp_path, config=SMALL)
    model = _load_served_model(tmp_path / "recommender" / "1", outputs=("ITEM_IDS", "SCORES"))
    users, _, _, _ = log.arrays()
    [answer] = model.execute([{"USER_ID": np.array([[users[0]]]), "HISTORY": np.array([[5, -1, -1, -1]])}])
    assert answer.error is None and set(answer.outputs) == {"ITEM_IDS", "SCORES"}


def test_file_rows_that_do_not_convert_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,193609,4.5,964982703\n"
        "1,31,3.0,964982704\n"
        ",31,4.0,964982705\n"  # no user (a string like "x" is an id of its own)
        "2,31,oops,964982706\n"  # rating not a number: no type
        "2,32,1.0,964982707\n"  # below every threshold: skipped by the mapping
        "2,33,4.0,soon\n"  # timestamp
    )
    (tmp_path / "map.yaml").write_text(
        "user: userId\nitem: movieId\ntimestamp: {column: timestamp, unit: s}\n"
        "type: {thresholds: {column: rating, at_least: {purchase: 4.5, click: 3.5, view: 2.0}}}\n"
        "event_id: null\n"
    )
    log = from_file(tmp_path / "ratings.csv", tmp_path / "map.yaml")
    summary = log.summary()
    assert summary["rows_read"] == 6 and summary["interactions"] == 2
    assert summary["skipped_reasons"] == {
        NOT_AN_ID.format("user_id"): 1,
        "type is not view, click or purchase": 1,
        "skipped by the mapping": 1,
        "ts is not an integer (epoch ms)": 1,
    }
    _, items, ts, kinds = log.arrays()
    assert items.tolist() == [193609, 31] and kinds.tolist() == [2, 0] and ts[0] == 964982703000


def test_train_command_wiring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        f"{u},{i},{(u + i) % 5 + 1},{1000 + n}"
        for n, (u, i) in enumerate((u, i) for u in range(40) for i in range(6))
    ]
    (tmp_path / "r.csv").write_text("user_id,item_id,rating,ts\n" + "\n".join(rows) + "\n")
    (tmp_path / "m.yaml").write_text(
        "timestamp: {column: ts, unit: s}\ntype: {constant: view}\nevent_id: null\n"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-format", default="text")
    common.add_argument("--log-level")
    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(
        [
            "train",
            "--file",
            str(tmp_path / "r.csv"),
            "--mapping",
            str(tmp_path / "m.yaml"),
            "--out",
            str(tmp_path / "repo"),
            "--log-level",
            "WARNING",
        ]
    )
    assert args.func(args) == 0
    summary = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["input"]["interactions"] == 240 and summary["version"] == 1
    assert (tmp_path / "repo" / "recommender" / "1" / "embeddings.npz").is_file()


def test_top_k_past_the_items_outside_history_serves_no_history_item(tmp_path: Path) -> None:
    # 5 items, 3 in the history, top 4: the 2 others, then -1 (never a history item)
    model = scoring.Recommender(
        {
            "item_ids": np.array([10, 20, 30, 40, 50]),
            "item_emb": np.zeros((5, 1), dtype=np.float32),
            "user_emb": np.zeros((0, 1), dtype=np.float32),
            "item_bias": np.arange(5, dtype=np.float32),
        }
    )
    ids, scores = model.recommend(np.array([1]), np.array([[50, 40, 30, -1]]), 4)
    assert ids.tolist() == [[20, 10, -1, -1]]
    assert np.isneginf(scores[0, 2:]).all()
    # the same through a written version's model.py: a catalogue of 6 items, top 10
    log = log_of([(u, 1000 + (u + j) % 6, j) for u in range(30) for j in range(4)])
    train_log(log, tmp_path, config=SMALL)
    served = _load_served_model(tmp_path / "recommender" / "1")
    history = np.array([[1000, 1001, 1002, -1], [1003, -1, -1, -1]])
    (response,) = served.execute([{"USER_ID": np.array([[0], [77]]), "HISTORY": history}])
    got = response.outputs["ITEM_IDS"]
    assert got.shape == (2, 10)
    for row, hist in zip(got.tolist(), history.tolist(), strict=True):
        items = [i for i in row if i >= 0]
        assert not set(items) & set(hist) and len(items) == len(set(items)) == 6 - sum(h >= 0 for h in hist)


def test_serving_and_the_blend_scale_hold_a_bounded_block_of_scores() -> None:
    n_items = 10**6  # ids up to 10^6, every one in the catalogue
    model = scoring.Recommender(
        {
            "item_emb": np.ones((n_items, 4), dtype=np.float32),
            "user_emb": np.ones((1, 4), dtype=np.float32),
            "item_bias": np.linspace(0, 1, n_items, dtype=np.float32),
        }
    )
    users, history = np.zeros(64, dtype=np.int64), np.full((64, 16), -1, dtype=np.int64)
    history[:, 0] = n_items - 1
    tracemalloc.start()
    try:
        ids, _ = model.recommend_dense(users, history, 10)
        _, serve_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        served = ServedModel(model.item_emb, model.user_emb, np.zeros(n_items, dtype=np.float32))
        ev = EvalSet(np.zeros(256, dtype=np.int64), np.full((256, 16), -1, dtype=np.int64), np.zeros(256))
        score_scale(served, ev)
        _, scale_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids[:, 0].tolist() == [n_items - 2] * 64  # the best item outside the history
    assert serve_peak < 400 * 2**20, f"serving 64 rows: peak {serve_peak / 2**20:.0f} MiB"
    assert scale_peak < 400 * 2**20, f"score scale: peak {scale_peak / 2**20:.0f} MiB"


def test_popularity_written_when_the_time_budget_leaves_no_candidate_says_so() -> None:
    report = train_log(structured(events=10_000), None, config=replace(SMALL, time_budget_s=0.0))
    chosen = report.summary["chosen"]
    assert report.summary["test"]["model_is_popularity"]
    assert "not tried within the time budget" in chosen["why"], chosen
    assert len(report.summary["candidates_skipped"]) == 2


def test_train_command_refuses_unusable_input_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.recsys.cli import main

    (tmp_path / "r.csv").write_text("userId,movieId,timestamp\n1,2,3\n")
    (tmp_path / "bad.yaml").write_text("user: userId\nbogus: 1\n")
    out = str(tmp_path / "repo")
    cases = {
        "bad.yaml: bogus": ["--file", str(tmp_path / "r.csv"), "--mapping", str(tmp_path / "bad.yaml")],
        "nope.yaml": ["--file", str(tmp_path / "r.csv"), "--mapping", str(tmp_path / "nope.yaml")],
        "No such file": ["--file", str(tmp_path / "missing.csv")],
    }
    for expected, argv in cases.items():
        assert main([*argv, "--out", out, "--log-level", "WARNING"]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    assert not (tmp_path / "repo").exists()


def test_ids_the_pipeline_refuses_are_not_trained_on() -> None:
    # the pipeline's parse takes ids in 0..2^53-1: a model knowing a larger one would
    # recommend an item (or know a user) that no event of the pipeline can name
    log = InteractionLog()
    for user, item in ((1, 2**53 - 1), (2**53, 5), (2**62, 5), (3, 2**53)):
        log.add({"user_id": user, "item_id": item, "type": "view", "ts": 1})
    summary = log.summary()
    assert summary["interactions"] == 1 and summary["rows_read"] == 4
    assert summary["skipped_reasons"] == {
        NOT_AN_ID.format("user_id"): 2,
        NOT_AN_ID.format("item_id"): 1,
    }
    assert log.arrays()[1].tolist() == [2**53 - 1]
