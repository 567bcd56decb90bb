"""Bad input on the real stack: each case ends in the dead-letter topic with its reason,
and the service keeps going (the valid events around them are recommended)."""

from __future__ import annotations

import time

import pytest

from pipeline.audit import dead_letter_source
from pipeline.redrive import redrive
from pipeline.testing.builders import OMIT, event_json, keyed_event
from tests.integration.harness import RawIn, fresh_topology, read_values, run_until_accounted

pytestmark = pytest.mark.integration


def bad_cases() -> list[tuple[str, RawIn, str]]:
    now = time.time_ns() // 1_000_000
    return [
        ("invalid JSON", (b"1", b'{"event_id": ', []), "malformed_json"),
        ("JSON list", (b"1", b"[]", []), "wrong_type"),
        ("JSON number", (b"1", b"3.14", []), "wrong_type"),
        ("missing user_id", (b"1", event_json(user_id=OMIT), []), "missing_field"),
        ("missing event_id", (b"1", event_json(event_id=OMIT), []), "missing_field"),
        ("user_id as a list", (b"1", event_json(user_id=["7"]), []), "wrong_type"),
        ("user_id an empty string", (b"1", event_json(user_id=""), []), "wrong_type"),
        ("item_id a string of 257", (b"1", event_json(item_id="x" * 257), []), "out_of_range"),
        ("item_id as float", (b"1", event_json(item_id=2.5), []), "wrong_type"),
        ("ts as bool", (b"1", event_json(ts=True), []), "wrong_type"),
        ("unknown event type", (b"1", event_json(type="share"), []), "unknown_type"),
        ("negative id", (b"1", event_json(user_id=-1), []), "out_of_range"),
        ("huge id", (b"1", event_json(item_id=2**60), []), "out_of_range"),
        ("empty message", (b"1", b"", []), "empty"),
        ("null value", (b"1", None, []), "empty"),
        ("null key", (None, event_json(), []), "missing_key"),
        ("non-UTF-8 bytes", (b"1", b'{"event_id": "\xff\xfe"}', []), "malformed_json"),
        ("oversized", (b"1", event_json(pad="x" * 5000), []), "oversized"),
        ("far future", (b"1", event_json(ts=now + 3_600_000), []), "future_timestamp"),
        ("far past", (b"1", event_json(ts=now - 10 * 86_400_000), []), "too_old"),
    ]


async def test_every_bad_input_case_is_dead_lettered_with_its_reason(stack) -> None:
    topology = fresh_topology(
        stack,
        source={"max_event_bytes": 4096},
        validation={"require_key": True, "max_future_skew_ms": 60_000, "max_age_ms": 86_400_000},
    )
    cases = bad_cases()
    good = [keyed_event(user_id=u, item_id=u + 10) for u in range(50)]
    records: list[RawIn] = good[:25] + [raw for _, raw, _ in cases] + good[25:]
    run = await run_until_accounted(topology, records)

    summary = run.ledger.summary()
    assert summary["lost"] == 0
    assert summary["recommendations"] == 50  # the service kept going around them
    dead = await read_values(topology, topology.sink.dead_letter_topic)
    by_coord = {dead_letter_source(list(d.headers)): d for d in dead}
    for offset_in_run, (name, raw, reason) in enumerate(cases, start=25):
        letter = by_coord.get(run.coords[offset_in_run])
        assert letter is not None, f"{name}: no dead letter"
        headers = dict(letter.headers)
        assert headers["dlq.reason"].decode() == reason, name
        assert headers["dlq.detail"], name  # a readable explanation
        assert letter.value == (raw[1] or b""), name
    assert len(dead) == len(cases)


async def test_redrive_sends_chosen_dead_letters_back_once(stack) -> None:
    topology = fresh_topology(stack)
    poison = event_json(event_id="p1", user_id=3, type="share")  # an event type not known yet
    malformed = b"{oops"
    run = await run_until_accounted(topology, [(b"3", poison, []), (b"3", malformed, [])])
    assert run.ledger.summary()["dead_letter_reasons"] == {
        "unknown_type": 1,
        "malformed_json": 1,
    }

    report = await redrive(topology, ["unknown_type"])
    assert report["unknown_type"] == {"redriven": 1, "skipped": 1}
    again = await redrive(topology, ["unknown_type"])
    assert again["unknown_type"] == {}  # progress kept: nothing new to re-send

    inputs = await read_values(topology, topology.source.topics[0])
    assert len(inputs) == 3
    redriven = next(r for r in inputs if "redrive.from" in dict(r.headers))
    headers = dict(redriven.headers)
    assert redriven.value == poison and redriven.key == b"3"
    assert headers["redrive.from"].startswith(topology.sink.dead_letter_topic.encode())
    assert not any(k.startswith("dlq.") for k in headers)
