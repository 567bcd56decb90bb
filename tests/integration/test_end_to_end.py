"""The whole path on the real broker and the real Triton: every event accounted for,
the output schema, exclusion of seen items, dead letters with reasons, committed offsets."""

from __future__ import annotations

import orjson
import pytest

from pipeline.audit import audit_topology
from pipeline.devstack.dev import live_events
from pipeline.operators.enrich import MAX_LISTED_SOURCES
from pipeline.recsys.generator import GeneratorConfig
from pipeline.testing.builders import keyed_event
from tests.integration.harness import (
    RawIn,
    committed_offsets,
    fresh_topology,
    read_values,
    run_until_accounted,
)

pytestmark = pytest.mark.integration

VALID = 3000


def valid_records(count: int, seed: int = 5) -> tuple[list[RawIn], list[dict[str, object]]]:
    events = list(live_events(GeneratorConfig(seed=seed), count))
    records: list[RawIn] = [
        (str(e["user_id"]).encode(), orjson.dumps(e), [("traceparent", f"00-{i:032x}-01".encode())])
        for i, e in enumerate(events)
    ]
    return records, events


MALFORMED: list[tuple[bytes | None, str]] = [
    (b"{not json", "malformed_json"),
    (b"[1, 2, 3]", "wrong_type"),
    (b"42", "wrong_type"),
    (b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1}', "missing_field"),
    (b'{"event_id": "x", "user_id": 1.5, "item_id": 2, "type": "view", "ts": 1}', "wrong_type"),
    (b'{"event_id": "x", "user_id": 1, "item_id": 2, "type": "like", "ts": 1}', "unknown_type"),
    (b'{"event_id": "x", "user_id": -5, "item_id": 2, "type": "view", "ts": 1}', "out_of_range"),
    (b"", "empty"),
    (b"\xff\xfe\x00garbage", "malformed_json"),
]


async def test_every_event_is_accounted_for_and_outputs_are_enriched(stack) -> None:
    topology = fresh_topology(stack)
    records, events = valid_records(VALID)
    bad: list[RawIn] = [(None, value, []) for value, _ in MALFORMED]
    run = await run_until_accounted(topology, records + bad)

    summary = run.ledger.summary()
    assert summary["events_in"] == VALID + len(MALFORMED)
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["dead_letters"] == len(MALFORMED)
    expected_reasons: dict[str, int] = {}
    for _, reason in MALFORMED:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert summary["dead_letter_reasons"] == expected_reasons

    outputs = await read_values(topology, topology.sink.topic)
    by_coord = {c: e for c, e in zip(run.coords, events, strict=False)}
    seen_sources = 0
    for rec in outputs:
        doc = orjson.loads(rec.value)
        assert set(doc) >= {"event_id", "user_id", "items", "model", "sources", "window", "timings"}
        assert doc["model"] == {"name": "recommender", "version": "1"}
        assert len(doc["items"]) == topology.model.top_k
        scores = [i["score"] for i in doc["items"]]
        assert scores == sorted(scores, reverse=True)
        assert doc["window"]["start_ms"] <= doc["window"]["end_ms"]
        assert all(v >= 0 for v in doc["timings"].values()), doc["timings"]
        recommended = {i["item_id"] for i in doc["items"]}
        for src in doc["sources"]:
            event = by_coord[(src["topic"], src["partition"], src["offset"])]
            assert src["event_id"] == event["event_id"]
            assert event["user_id"] == doc["user_id"]
            assert event["item_id"] not in recommended, "recommended an item just interacted with"
            seen_sources += 1
        assert rec.key == str(doc["user_id"]).encode()
        assert dict(rec.headers)["traceparent"].startswith(b"00-")
    assert seen_sources == VALID


async def test_dead_letters_keep_original_bytes_and_source(stack) -> None:
    topology = fresh_topology(stack)
    bad: list[RawIn] = [(b"k", b"{broken", [("traceparent", b"t1")])]
    run = await run_until_accounted(topology, bad)
    assert run.ledger.summary()["lost"] == 0
    [dead] = await read_values(topology, topology.sink.dead_letter_topic)
    headers = dict(dead.headers)
    assert dead.value == b"{broken"
    assert dead.key == b"k"
    assert headers["dlq.reason"] == b"malformed_json"
    assert headers["dlq.error_class"] == b"InvalidEvent"
    topic, partition, offset = run.coords[0]
    assert headers["dlq.source_topic"].decode() == topic
    assert int(headers["dlq.source_partition"]) == partition
    assert int(headers["dlq.source_offset"]) == offset
    assert headers["traceparent"] == b"t1"


async def test_offsets_are_committed_after_outputs(stack) -> None:
    topology = fresh_topology(stack)
    records, _ = valid_records(500, seed=9)
    run = await run_until_accounted(topology, records)
    assert run.ledger.summary()["lost"] == 0

    produced: dict[int, int] = {}
    for _, partition, offset in run.coords:
        produced[partition] = max(produced.get(partition, 0), offset + 1)
    committed = await committed_offsets(topology, produced)
    assert {p: offset or 0 for p, offset in committed.items()} == produced


async def test_an_item_the_model_does_not_know_is_answered_and_counted(stack) -> None:
    """A product newer than the model, on the real Triton: the model ignores it and reports
    it (UNKNOWN_ITEMS), the pipeline counts it, and the user is recommended as usual."""
    topology = fresh_topology(stack, window={"max_ms": 200})
    records, _ = valid_records(200, seed=13)
    records.insert(100, keyed_event(event_id="new-product", user_id=77, item_id=10**12))
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0
    assert run.runtime is not None
    assert run.runtime.metrics.unknown_history_items.labels("recommender")._value.get() >= 1
    outputs = await read_values(topology, topology.sink.topic)
    answered = [orjson.loads(r.value) for r in outputs]
    assert any(s["event_id"] == "new-product" for doc in answered for s in doc["sources"])


async def test_streams_are_recycled_without_losing_requests(stack) -> None:
    topology = fresh_topology(stack, model={"streams": 1, "recycle_stream_after": 3}, batch={"max_size": 8})
    records, _ = valid_records(400, seed=17)
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0
    assert run.runtime is not None
    assert run.runtime.pool.streams[0].opens > 3  # replaced every 3 requests
    states = run.runtime.dispatcher.lifecycle.snapshot()
    assert states["current"] == {s: 0 for s in states["current"]}  # all COMPLETE
    assert states["entered"]["COMPLETE"] == states["entered"]["START"] > 0


async def test_a_user_with_hundreds_of_events_in_a_window_gets_a_bounded_record(stack) -> None:
    """A bot-like user: 600 events in a window. The recommendation lists the first
    MAX_LISTED_SOURCES and counts them all; the audit accounts for the rest by user."""
    topology = fresh_topology(stack, window={"max_ms": 1_000})
    events = list(live_events(GeneratorConfig(seed=11), 600))
    for e in events:
        e["user_id"] = 4242
    records: list[RawIn] = [(b"4242", orjson.dumps(e), []) for e in events]
    run = await run_until_accounted(topology, records)
    summary = run.ledger.summary()
    assert summary["lost"] == 0 and summary["events_in"] == 600, summary
    outputs = [orjson.loads(r.value) for r in await read_values(topology, topology.sink.topic)]
    assert sum(doc["source_count"] for doc in outputs) == 600
    assert all(len(doc["sources"]) <= MAX_LISTED_SOURCES for doc in outputs)
    assert any(doc["source_count"] > len(doc["sources"]) for doc in outputs), "no window held >100"
    audited = await audit_topology(topology)
    assert audited["lost"] == 0 and audited["answered_unlisted"] == summary["answered_unlisted"] > 0
