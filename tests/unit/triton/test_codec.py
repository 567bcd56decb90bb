"""Codec: inference batches ↔ Triton ModelInferRequest/Response, as raw numpy bytes."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from pipeline.errors import BadOutput
from pipeline.events import Recommendations, UserRequest
from pipeline.testing.builders import user_request
from pipeline.triton.codec import (
    HISTORY_PAD,
    WITH_UNKNOWN_ITEMS,
    ModelSignature,
    decode,
    encode,
    request_id,
    unknown_items,
)

SIG = ModelSignature(name="recommender", version="2", history_length=4, top_k=3)


def row(user: int, *history: int) -> UserRequest:
    return user_request(user=user, history=history)


def inputs(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    return {
        t.name: np.frombuffer(raw, dtype=np.int64).reshape(tuple(t.shape))
        for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
    }


def response(*outputs: tuple[str, str, np.ndarray]) -> service_pb2.ModelInferResponse:
    resp = service_pb2.ModelInferResponse(model_name="recommender", model_version="2", id="r")
    for name, datatype, array in outputs:
        out = resp.outputs.add()
        out.name, out.datatype = name, datatype
        out.shape.extend(array.shape)
        resp.raw_output_contents.append(array.tobytes())
    return resp


def fake_model(request: service_pb2.ModelInferRequest, k: int) -> service_pb2.ModelInferResponse:
    """Recommend, per row, the row's history reversed (pads skipped) then user_id*1000+j."""
    arrays = inputs(request)
    users, history = arrays["USER_ID"][:, 0], arrays["HISTORY"]
    ids = np.zeros((len(users), k), dtype=np.int64)
    for i, user in enumerate(users):
        picks = [int(h) for h in history[i][::-1] if h != HISTORY_PAD]
        picks += [int(user) * 1000 + j for j in range(k)]
        ids[i] = picks[:k]
    scores = np.tile(np.linspace(1.0, 0.5, k, dtype=np.float32), (len(users), 1))
    return response(("ITEM_IDS", "INT64", ids), ("SCORES", "FP32", scores))


def test_request_id_names_the_first_record_rows_and_attempt():
    assert request_id(("interactions", 3, 1200), 16, 2, 7) == "interactions-3-1200+16#2.7"
    assert request_id(("interactions", 3, 1200), 16, 2, 8) != request_id(("interactions", 3, 1200), 16, 2, 7)


def test_encode_metadata_inputs_and_outputs():
    request = encode([row(7, 1, 2), row(8, 3)], SIG, "req-1")
    assert request.model_name == "recommender"
    assert request.model_version == "2"
    assert request.id == "req-1"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("USER_ID", "INT64", [2, 1]),
        ("HISTORY", "INT64", [2, 4]),
    ]
    assert len(request.raw_input_contents) == 2
    assert [len(raw) for raw in request.raw_input_contents] == [2 * 8, 2 * 4 * 8]
    assert [o.name for o in request.outputs] == ["ITEM_IDS", "SCORES"]
    arrays = inputs(request)
    assert arrays["USER_ID"].tolist() == [[7], [8]]


def test_history_padded_with_minus_one_and_truncated_to_the_newest():
    rows = [row(1, 10, 11, 12, 13, 14, 15), row(2, 20), row(3), row(4, 40, 41, 42, 43)]
    history = inputs(encode(rows, SIG, "r"))["HISTORY"]
    assert history.tolist() == [
        [12, 13, 14, 15],  # newest four, still newest last
        [20, -1, -1, -1],
        [-1, -1, -1, -1],
        [40, 41, 42, 43],
    ]
    assert HISTORY_PAD == -1


def test_large_ids_survive_int64_encoding():
    big = 2**53 - 1
    arrays = inputs(encode([row(big, big, 0)], SIG, "r"))
    assert arrays["USER_ID"].tolist() == [[big]]
    assert arrays["HISTORY"].tolist() == [[big, 0, -1, -1]]


def test_no_parameters_unless_given():
    request = encode([row(1, 2)], SIG, "r")
    assert "priority" not in request.parameters
    assert "timeout" not in request.parameters
    assert len(request.parameters) == 0


def test_priority_and_timeout_parameters_when_given():
    request = encode([row(1, 2)], SIG, "r", priority=3, timeout_us=1_500_000)
    assert request.parameters["priority"].uint64_param == 3
    assert request.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert request.parameters["timeout"].int64_param == 1_500_000
    assert request.parameters["timeout"].WhichOneof("parameter_choice") == "int64_param"


def test_priority_alone_and_timeout_alone():
    only_priority = encode([row(1)], SIG, "r", priority=1)
    assert set(only_priority.parameters) == {"priority"}
    only_timeout = encode([row(1)], SIG, "r", timeout_us=0)
    assert set(only_timeout.parameters) == {"timeout"}


def test_encode_decode_round_trip_through_a_fake_model():
    rows = [row(7, 1, 2, 3), row(8), row(9, 5, 6, 7, 8, 9)]
    request = encode(rows, SIG, "r")
    resp = service_pb2.ModelInferResponse.FromString(fake_model(request, k=3).SerializeToString())
    recs = decode(resp, rows=3, top_k=3)
    assert [r.item_ids for r in recs] == [(3, 2, 1), (8000, 8001, 8002), (9, 8, 7)]
    for r in recs:
        assert r.scores == pytest.approx((1.0, 0.75, 0.5))
        assert all(isinstance(i, int) for i in r.item_ids)
        assert all(isinstance(s, float) for s in r.scores)


def test_decode_truncates_to_top_k_and_ignores_output_order():
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], dtype=np.int64)
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2]], dtype=np.float32)
    resp = response(("SCORES", "FP32", scores), ("ITEM_IDS", "INT64", ids))
    recs = decode(resp, rows=2, top_k=2)
    assert [r.item_ids for r in recs] == [(5, 6), (9, 10)]
    assert recs[0].scores == pytest.approx((0.9, 0.8))
    assert recs[1].scores == pytest.approx((0.5, 0.4))
    assert isinstance(recs[0], Recommendations)


def test_decode_rounds_scores_to_six_decimals_as_the_output_shows_them():
    scores = np.array([[0.91234567, 0.1234565, 1 / 3]], dtype=np.float32)
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    [recs] = decode(response(("ITEM_IDS", "INT64", ids), ("SCORES", "FP32", scores)), rows=1, top_k=3)
    assert recs.scores == tuple(round(float(s), 6) for s in scores[0])
    assert [repr(s) for s in recs.scores] == ["0.912346", "0.123457", "0.333333"]  # not 0.91234600543975


def test_decode_empty_batch():
    ids, scores = np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3), dtype=np.float32)
    resp = response(("ITEM_IDS", "INT64", ids), ("SCORES", "FP32", scores))
    assert decode(resp, rows=0, top_k=3) == []


IDS = np.arange(6, dtype=np.int64).reshape(2, 3)
SCORES = np.ones((2, 3), dtype=np.float32)


@pytest.mark.parametrize(
    ("outputs", "rows", "match"),
    [
        ([("ITEM_IDS", "INT64", IDS)], 2, "missing outputs"),
        ([("SCORES", "FP32", SCORES)], 2, "missing outputs"),
        ([], 2, "missing outputs"),
        ([("ITEM_IDS", "INT64", IDS), ("SCORES", "FP32", SCORES)], 3, "for 3 rows"),
        ([("ITEM_IDS", "INT64", IDS), ("SCORES", "FP32", SCORES)], 1, "for 1 rows"),
        ([("ITEM_IDS", "INT64", IDS), ("SCORES", "FP32", SCORES[:, :2].copy())], 2, "output shape"),
        ([("ITEM_IDS", "INT64", IDS), ("SCORES", "BYTES", SCORES)], 2, "unexpected datatype"),
        ([("ITEM_IDS", "INT32", IDS.astype(np.int32)), ("SCORES", "FP32", SCORES)], 2, "unexpected datatype"),
    ],
)
def test_decode_rejects_bad_output(outputs, rows, match):
    with pytest.raises(BadOutput, match=match):
        decode(response(*outputs), rows=rows, top_k=3)


def test_decode_rejects_outputs_without_raw_contents():
    resp = response(("ITEM_IDS", "INT64", IDS), ("SCORES", "FP32", SCORES))
    del resp.raw_output_contents[1]
    with pytest.raises(BadOutput):
        decode(resp, rows=2, top_k=3)


@pytest.mark.parametrize("case", ["raw_bytes_shorter_than_shape", "one_dimensional_outputs"])
def test_decode_malformed_tensor_raises_bad_output_not_a_numpy_error(case):
    """Raw bytes that do not fill the declared shape, or 1-D outputs, are BadOutput (a
    PipelineError the dispatcher dead-letters), not a numpy error escaping Dispatcher.infer."""
    if case == "raw_bytes_shorter_than_shape":
        resp = response(("ITEM_IDS", "INT64", IDS), ("SCORES", "FP32", SCORES))
        resp.raw_output_contents[0] = IDS.tobytes()[:-8]  # one element short of [2, 3]
    else:
        resp = response(("ITEM_IDS", "INT64", IDS[:, 0].copy()), ("SCORES", "FP32", SCORES[:, 0].copy()))
    try:
        decode(resp, rows=2, top_k=3)
    except BadOutput:
        return
    except Exception as exc:
        pytest.fail(f"decode raised {type(exc).__name__}: {exc} instead of BadOutput")
    pytest.fail("decode accepted a malformed tensor")


def test_padding_of_a_model_with_fewer_items_than_top_k_is_dropped() -> None:
    """A model with fewer items left to offer than top_k pads with -1 (score -inf): those
    slots are no recommendations (and -inf is no JSON number)."""
    ids = np.array([[5, 6, -1], [7, -1, -1]], dtype=np.int64)
    scores = np.array([[0.5, 0.25, -np.inf], [0.125, -np.inf, -np.inf]], dtype=np.float32)
    decoded = decode(response(("ITEM_IDS", "INT64", ids), ("SCORES", "FP32", scores)), 2, 3)
    assert decoded == [Recommendations((5, 6), (0.5, 0.25)), Recommendations((7,), (0.125,))]


def test_unknown_items_are_asked_for_only_when_the_model_reports_them() -> None:
    plain = encode([row(7, 1)], SIG, "r")
    asking = encode([row(7, 1)], SIG, "r", outputs=WITH_UNKNOWN_ITEMS)
    assert [o.name for o in plain.outputs] == ["ITEM_IDS", "SCORES"]
    assert [o.name for o in asking.outputs] == ["ITEM_IDS", "SCORES", "UNKNOWN_ITEMS"]


def test_unknown_items_are_summed_over_the_rows_and_zero_when_absent() -> None:
    ids = np.zeros((3, 3), dtype=np.int64)
    scores = np.zeros((3, 3), dtype=np.float32)
    counts = np.array([[2], [0], [1]], dtype=np.int32)
    answered = response(
        ("ITEM_IDS", "INT64", ids), ("SCORES", "FP32", scores), ("UNKNOWN_ITEMS", "INT32", counts)
    )
    assert unknown_items(answered) == 3
    assert len(decode(answered, 3, 3)) == 3  # the extra output does not disturb the answers
    assert unknown_items(response(("ITEM_IDS", "INT64", ids), ("SCORES", "FP32", scores))) == 0
