"""The trainer on string ids: the catalogue keys items by their hashes (pipeline/ids.py)
and keeps each item's own id, which the written version answers with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline import ids
from pipeline.recsys.data import InteractionLog, from_events, from_file
from pipeline.recsys.scoring import Recommender
from pipeline.recsys.train import train_log


def events(count: int = 4_000, seed: int = 3) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        user, item = int(rng.integers(60)), int(rng.integers(40))
        sku: object = f"SKU-{item:05d}" if item % 2 else item  # strings and integers in one catalogue
        out.append({"user_id": f"cust-{user}", "item_id": sku, "type": "click", "ts": 1_000 + n})
    return out


def test_a_catalogue_of_string_ids_is_written_with_each_items_own_id(tmp_path: Path) -> None:
    log = from_events(events())
    report = train_log(log, tmp_path, kind="popularity")
    assert report.summary["input"]["string_items"] == 20
    with np.load(tmp_path / "recommender" / "1" / "embeddings.npz") as data:
        arrays = {name: data[name] for name in data.files}  # no pickle needed to load it
    keys = [orjson.loads(k) for k in arrays["item_keys"].tolist()]
    assert [ids.internal_id(k) for k in keys] == arrays["item_ids"].tolist()  # aligned
    assert {k for k in keys if isinstance(k, str)} == {f"SKU-{i:05d}" for i in range(1, 40, 2)}
    assert {k for k in keys if isinstance(k, int)} == set(range(0, 40, 2))
    assert log.arrays()[0].min() >= ids.STRING_BASE  # users: their hashes
    model = Recommender(arrays)
    users = np.array([ids.internal_id("cust-1")])
    item_ids, _, dense = model.answer(users, np.full((1, 16), -1, dtype=np.int64), 10)
    named = orjson.loads(model.keys_json(dense)[0])
    assert [ids.internal_id(k) for k in named] == item_ids[0].tolist()


def test_a_catalogue_of_integers_has_no_keys(tmp_path: Path) -> None:
    plain = [{**e, "item_id": int(str(e["item_id"]).removeprefix("SKU-"))} for e in events()]
    train_log(from_events(plain), tmp_path, kind="popularity")
    with np.load(tmp_path / "recommender" / "1" / "embeddings.npz") as data:
        assert "item_keys" not in data.files


def test_digit_text_in_a_csv_is_the_integer_and_codes_stay_strings(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(
        "customer,sku,ts,kind\ncust-1,18,1000,view\ncust-1,SKU-00018,1001,view\n2,0018,1002,view\n"
    )
    (tmp_path / "map.yaml").write_text(
        "user: customer\nitem: sku\ntimestamp: {column: ts, unit: ms}\ntype: {column: kind}\nevent_id: null\n"
    )
    log = from_file(tmp_path / "orders.csv", tmp_path / "map.yaml")
    users, items, _, _ = log.arrays()
    assert items.tolist() == [18, ids.internal_id("SKU-00018"), ids.internal_id("0018")]
    assert users.tolist() == [ids.internal_id("cust-1")] * 2 + [2]


def test_two_items_sharing_a_hash_are_counted_not_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_xxh3", len)  # a hash of the length: "ab" and "cd" share it
    log = InteractionLog()
    for item in ("ab", "cd", "ab"):
        log.add({"user_id": 1, "item_id": item, "type": "view", "ts": 1})
    assert len(log) == 2 and log.collisions == 1
    assert log.summary()["skipped_reasons"] == {
        "item_id shares its 63-bit hash with another item's (pipeline/ids.py)": 1
    }
