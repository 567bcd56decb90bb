"""`pipeline tail`'s lines: a recommendation as user → items (version, latency), a dead
letter with its reason headers, an input as its JSON."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.events import RawRecord
from pipeline.tail import TailError, describe, render, where_to_read


def _record(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = (), topic: str = "t") -> RawRecord:
    return RawRecord(topic, 2, 41, 1_764_090_000_031, b"k", value, headers)


def test_a_recommendation_reads_as_user_items_version_latency() -> None:
    doc = {
        "user_id": 412,
        "items": [{"item_id": 3021, "score": 0.8}, {"item_id": 77, "score": 0.5}],
        "model": {"name": "recommender", "version": "3"},
        "sources": [{"topic": "interactions", "partition": 2, "offset": 1041}],
        "source_count": 1,
        "lane": "browsing",
        "timings": {"queued_ms": 0.4, "inference_ms": 6.1, "end_to_end_ms": 31.4},
    }
    assert (
        describe(_record(orjson.dumps(doc))) == "user 412 → 3021, 77 (recommender v3, 31 ms, lane browsing)"
    )
    doc.update(source_count=3, items=[{"item_id": i} for i in range(12)])
    line = describe(_record(orjson.dumps(doc)))
    assert line.startswith("user 412 → 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … (12) (") and "3 events" in line


def test_a_dead_letter_reads_with_its_reason_and_source() -> None:
    headers = (
        ("dlq.reason", b"malformed_json"),
        ("dlq.error_class", b"InvalidEvent"),
        ("dlq.detail", b"unexpected character"),
        ("dlq.attempts", b"0"),
        ("dlq.source_topic", b"interactions"),
        ("dlq.source_partition", b"1"),
        ("dlq.source_offset", b"99"),
    )
    assert describe(_record(b"{not json", headers)) == (
        "dead letter malformed_json (InvalidEvent: unexpected character) of interactions[1]@99: b'{not json'"
    )
    retried = (("dlq.reason", b"unavailable"), ("dlq.attempts", b"4"))
    assert (
        describe(_record(b'{"user_id": 1}', retried)) == 'dead letter unavailable, 4 attempts: {"user_id":1}'
    )


def test_inputs_read_as_their_json_and_the_rest_as_bytes() -> None:
    event = {"event_id": "e1", "user_id": "cust-18", "item_id": 5, "type": "view", "ts": 1}
    assert describe(_record(orjson.dumps(event))) == orjson.dumps(event).decode()
    assert describe(_record(b"\xff\x00")) == "not JSON: b'\\xff\\x00'"
    assert describe(_record(None)) == "not JSON: (no value)"
    undecodable = _record(None)._replace(undecodable="CRC mismatch")
    assert describe(undecodable) == "undecodable: CRC mismatch"
    line = render(_record(b"[1]", topic="interactions"))
    assert line.endswith(" interactions[2]@41  [1]") and line[:12].count(":") == 2


def test_without_a_dev_stack_it_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(TailError, match=f"no dev stack runs in {tmp_path}"):
        where_to_read(None, None, tmp_path)
    assert where_to_read(None, "127.0.0.1:9", tmp_path).bootstrap_servers == "127.0.0.1:9"  # type: ignore[union-attr]
