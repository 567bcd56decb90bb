"""ITEM_KEYS: a catalogue with string ids answers each row's items in their own ids (one
JSON array per row); the codec reads them beside ITEM_IDS (their hashes), the contract
knows the output, and the model's scoring writes it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import ids
from pipeline.errors import BadOutput
from pipeline.events import Recommendations
from pipeline.recsys.scoring import Recommender
from pipeline.testing.fake_triton import bytes_tensor
from pipeline.triton.codec import ANSWERS, ITEM_KEYS, asked_outputs, decode
from pipeline.triton.contract import ServedModel, Tensor, contract_problems
from tests.unit.triton.test_codec import response
from tests.unit.triton.test_contract import BOUND, SIG, served

SKU1, SKU2 = ids.internal_id("SKU-1"), ids.internal_id("SKU-2")


def keyed(ids_: np.ndarray, scores: np.ndarray, rows: list[bytes]):  # type: ignore[no-untyped-def]
    answered = response(("ITEM_IDS", "INT64", ids_), ("SCORES", "FP32", scores))
    out = answered.outputs.add()
    out.name, out.datatype = ITEM_KEYS, "BYTES"
    out.shape.extend((len(rows), 1))
    answered.raw_output_contents.append(bytes_tensor(rows))
    return answered


def test_rows_come_back_in_the_catalogues_own_ids_with_padding_dropped() -> None:
    item_ids = np.array([[SKU1, 18, SKU2], [SKU2, -1, -1]], dtype=np.int64)
    scores = np.array([[0.5, 0.25, 0.125], [0.5, -np.inf, -np.inf]], dtype=np.float32)
    rows = [b'["SKU-1",18,"SKU-2"]', b'["SKU-2"]']
    assert decode(keyed(item_ids, scores, rows), 2, 3) == [
        Recommendations((SKU1, 18, SKU2), (0.5, 0.25, 0.125), ("SKU-1", 18, "SKU-2")),
        Recommendations((SKU2,), (0.5,), ("SKU-2",)),
    ]
    # top_k below the model's: the keys are cut with the ids
    assert decode(keyed(item_ids, scores, rows), 2, 2)[0].keys == ("SKU-1", 18)


@pytest.mark.parametrize(
    "raw",
    [
        [b'["SKU-1"]', b"not json"],  # not JSON
        [b'["SKU-1"]'],  # a row missing
        [b'["SKU-1"]', b'{"a": 1}'],  # not an array
        [b"[]", b'["SKU-2"]'],  # fewer ids than items
    ],
)
def test_a_malformed_item_keys_output_is_bad_output(raw: list[bytes]) -> None:
    item_ids = np.array([[SKU1], [SKU2]], dtype=np.int64)
    scores = np.ones((2, 1), dtype=np.float32)
    with pytest.raises(BadOutput, match=ITEM_KEYS):
        decode(keyed(item_ids, scores, raw), 2, 1)


def test_item_keys_are_asked_for_only_when_the_model_declares_them() -> None:
    assert asked_outputs(False, False) == ANSWERS
    assert asked_outputs(True, True) == (*ANSWERS, "UNKNOWN_ITEMS", ITEM_KEYS)


def test_the_contract_knows_item_keys_and_its_type() -> None:
    model: ServedModel = served(ITEM_KEYS=Tensor("BYTES", (-1, 1)))
    assert contract_problems(model, SIG, BOUND) == []
    [problem] = contract_problems(served(ITEM_KEYS=Tensor("INT64", (-1, 1))), SIG, BOUND)
    assert problem == "model.name: 'recommender' ITEM_KEYS is INT64, the pipeline reads BYTES"


def test_the_model_answers_its_items_own_ids_as_json_per_row() -> None:
    """scoring.Recommender (the served model.py's): hashes in ITEM_IDS, the keys' JSON beside."""
    keys = ['"SKU-1"', "18", '"SKU-2"']
    order = np.argsort([SKU1, 18, SKU2])
    model = Recommender(
        {
            "item_ids": np.array([SKU1, 18, SKU2], dtype=np.int64)[order],
            "item_keys": np.array(keys, dtype=np.str_)[order],
            "item_emb": np.eye(3, dtype=np.float32)[order],
            "user_emb": np.zeros((0, 3), dtype=np.float32),
        }
    )
    history = np.full((2, 4), -1, dtype=np.int64)
    history[0, 0] = 18  # seen: never recommended
    item_ids, _, dense = model.answer(np.array([5, 6]), history, 3)
    json_rows = model.keys_json(dense)
    assert json_rows[0] in (b'["SKU-1","SKU-2"]', b'["SKU-2","SKU-1"]')
    as_ids = {b'"SKU-1"': SKU1, b'"SKU-2"': SKU2, b"18": 18}
    for row, text in zip(item_ids.tolist(), json_rows, strict=True):
        named = [as_ids[part] for part in text[1:-1].split(b",")]
        assert named == [i for i in row if i >= 0]
