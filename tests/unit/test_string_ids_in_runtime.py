"""String ids through the assembled pipeline (the testing kit's fake Triton answering a
catalogue with string ids as the shipped model does): the output names the user as it came
and the items in the catalogue's own ids; integer ids are untouched."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from pipeline import ids
from pipeline.testing import FakeTriton, request_arrays, run_to_end, topology
from pipeline.testing.builders import input_record

SKUS = [f"SKU-{n:05d}" if n % 2 else n for n in range(50)]  # a catalogue of strings and integers


async def test_string_users_and_items_come_out_as_they_came() -> None:
    records = [
        input_record(user_id="cust-18", item_id="SKU-00001", key=b"cust-18"),
        input_record(user_id="18", item_id=4, key=b"18"),  # an integer's text: the integer
    ]
    triton = FakeTriton(items=len(SKUS), item_keys=SKUS)
    run = await run_to_end(topology(window={"max_ms": 50}), records, triton)
    assert run.lost() == []
    recs = {rec["user_id"]: rec for rec in run.sink.recommendations()}
    assert set(recs) == {"cust-18", 18}
    for rec in recs.values():
        named = [item["item_id"] for item in rec["items"]]
        assert named and all(item in SKUS for item in named), named
        assert any(isinstance(item, str) and item.startswith("SKU-") for item in named)
    keys = {r.key for r in run.sink.records if r.sources and r.topic != run.sink.dead_letter_topic}
    assert keys == {b"cust-18", b"18"}
    # the model was asked with internal ids: the string user's hash, the integer as it is
    users = {int(u) for request in triton.requests for u in request_users(request)}
    assert users == {ids.internal_id("cust-18"), 18}


async def test_a_catalogue_of_integers_answers_its_integers() -> None:
    run = await run_to_end(topology(window={"max_ms": 50}), [input_record(user_id=7, item_id=3)])
    (rec,) = run.sink.recommendations()
    assert rec["user_id"] == 7 and all(type(item["item_id"]) is int for item in rec["items"])


def request_users(request: service_pb2.ModelInferRequest) -> list[int]:
    return list(request_arrays(request)["USER_ID"][:, 0].tolist())
