"""Durable user state on the real broker and the real Triton: a deploy (a new member on a
fresh disk) restores every user's history from the changelog the pipeline made, and the
model keeps never naming an item of the user's recent history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pipeline import kafka_clients
from pipeline.devstack.dev import live_events
from pipeline.events import RawRecord
from pipeline.kafka_io import read_to_end
from pipeline.operators.coalesce import merge_pairs
from pipeline.recsys.generator import GeneratorConfig
from pipeline.state.histories import HistoryStore
from pipeline.topology.schema import Topology
from tests.integration.harness import RawIn, fresh_topology, read_values, run_until_accounted

HISTORY = 16


def keyed(events: list[dict[str, object]]) -> list[RawIn]:
    return [(str(e["user_id"]).encode(), orjson.dumps(e), []) for e in events]


def history_before(inputs: list[RawRecord], partition: int, offset: int, user: int) -> set[int]:
    """The user's last HISTORY distinct items up to and including ``offset`` of its partition."""
    pairs = []
    for record in inputs:
        if record.partition == partition and record.offset <= offset:
            doc = orjson.loads(record.value or b"{}")
            if doc["user_id"] == user:
                pairs.append((doc["ts"], doc["item_id"]))
    return {item for _, item in merge_pairs({}, pairs, HISTORY, True)}


def naming_history(recommendations: list[dict[str, Any]], inputs: list[RawRecord]) -> int:
    """Recommendations naming an item of the user's history as the inputs say it was."""
    naming = 0
    for rec in recommendations:
        last = max(rec["sources"], key=lambda s: s["offset"])
        seen = history_before(inputs, last["partition"], last["offset"], rec["user_id"])
        naming += bool(seen & {i["item_id"] for i in rec["items"]})
    return naming


async def changelog_partitions(topology: Topology) -> int:
    consumer = kafka_clients.consumer(topology.broker, client_suffix="-test")
    await consumer.start()
    try:
        await consumer.topics()
        return len(consumer.partitions_for_topic(topology.changelog_topic) or ())
    finally:
        await consumer.stop()


async def test_a_deploy_on_a_fresh_disk_keeps_every_history(stack, tmp_path: Path) -> None:
    generated = list(live_events(GeneratorConfig(seed=11, users=150), 3_000))
    first, second = generated[:2_000], generated[2_000:]
    before = fresh_topology(stack, state={"dir": str(tmp_path / "a")})
    run1 = await run_until_accounted(before, keyed(first))
    assert run1.ledger.summary()["lost"] == 0
    assert await changelog_partitions(before) == 4  # made by the pipeline, as many as the input

    after = before.model_copy(update={"state": before.state.model_copy(update={"dir": tmp_path / "b"})})
    run2 = await run_until_accounted(after, keyed(second))
    summary = run2.ledger.summary()
    assert summary["lost"] == 0 and summary["dead_letters"] == 0

    inputs = [r async for r in read_to_end(before.broker, before.source.topics[0])]
    pairs: dict[int, list[tuple[int, int]]] = {}
    partition_of: dict[int, int] = {}
    for record in inputs:
        doc = orjson.loads(record.value or b"{}")
        pairs.setdefault(doc["user_id"], []).append((doc["ts"], doc["item_id"]))
        partition_of[doc["user_id"]] = record.partition
    mismatched = []
    for partition in range(4):  # the new member's stores, as its stop left them
        store = HistoryStore(tmp_path / "b" / f"partition-{partition}", HISTORY, True, 1 << 20)
        for user in (u for u, p in partition_of.items() if p == partition):
            if store.history(user) != tuple(i for _, i in merge_pairs({}, pairs[user], HISTORY, True)):
                mismatched.append(user)
        store.close()
    assert mismatched == [] and len(partition_of) > 100

    second_ids = {e["event_id"] for e in second}
    outputs = [orjson.loads(r.value) for r in await read_values(before, before.sink.topic)]
    after_deploy = [o for o in outputs if any(s["event_id"] in second_ids for s in o["sources"])]
    assert len(after_deploy) > 100  # a burst: one per user and window
    assert naming_history(after_deploy, inputs) == 0
