"""Warm start on the real broker and Triton: `pipeline state build` writes the histories of a
file of past events to the topology's changelog; the first worker of a new deployment
restores them, so its first recommendations already leave out what each user saw."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import yaml

from pipeline.devstack.worker import topology_document
from pipeline.operators.coalesce import merge_pairs
from pipeline.state.histories import HistoryStore
from pipeline.testing.builders import now_ms
from tests.integration.harness import (
    create_topics,
    fresh_topology,
    read_values,
    run_pipeline_command,
    run_until_accounted,
)

USERS, HISTORY = 60, 16


async def test_a_new_deployment_starts_from_the_built_histories(stack, tmp_path: Path) -> None:
    topology = fresh_topology(stack, state={"dir": str(tmp_path / "state")})
    await create_topics(topology)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology_document(topology)))
    rng = random.Random(3)
    start = now_ms() - 86_400_000
    past = [
        {
            "event_id": f"old-{u}-{n}",
            "user_id": u,
            "item_id": rng.randrange(5_000),
            "type": "view",
            "ts": start + n,
        }
        for u in range(USERS)
        for n in range(20)
    ]
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(orjson.dumps(e) for e in past) + b"\n{not an event}\n")

    built = run_pipeline_command("state", "build", "--topology", path, "--file", history)
    assert built.returncode == 0, built.stderr[-2000:]
    summary = orjson.loads(built.stdout.strip().splitlines()[-1])
    assert summary["users_written"] == USERS and summary["skipped"] == 1

    new = [
        {"event_id": f"new-{u}", "user_id": u, "item_id": 4_999 - u, "type": "view", "ts": now_ms()}
        for u in range(USERS)
    ]
    run = await run_until_accounted(
        topology, [(str(e["user_id"]).encode(), orjson.dumps(e), []) for e in new]
    )
    assert run.ledger.summary()["lost"] == 0 and run.ledger.summary()["dead_letters"] == 0

    pairs: dict[int, list[tuple[int, int]]] = {}
    for e in past + new:
        pairs.setdefault(int(e["user_id"]), []).append((int(e["ts"]), int(e["item_id"])))  # type: ignore[call-overload]
    expected = {u: tuple(i for _, i in merge_pairs({}, p, HISTORY, True)) for u, p in pairs.items()}
    stored: dict[int, tuple[int, ...]] = {}
    for store_dir in sorted((tmp_path / "state" / topology.changelog_topic).iterdir()):
        store = HistoryStore(store_dir, HISTORY, True, 1 << 20)
        stored.update({u: h for u in range(USERS) if (h := store.history(u))})
        store.close()
    assert stored == expected  # restored from the built changelog, then extended live

    outputs = [orjson.loads(r.value) for r in await read_values(topology, topology.sink.topic)]
    assert len(outputs) == USERS
    for rec in outputs:  # the first answers already leave out what the user saw before
        assert not set(expected[rec["user_id"]]) & {i["item_id"] for i in rec["items"]}
