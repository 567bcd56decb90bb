"""`pipeline experiment` on the real broker and Triton: the recommendations a run wrote,
judged by what their users did next, agree with a plain recount from the events the test
produced (the user's next event by time after the recommendation's newest input, within
the window), and the command prints it as one JSON document."""

from __future__ import annotations

import orjson
import pytest
import yaml

from pipeline.devstack.dev import live_events
from pipeline.devstack.worker import topology_document
from pipeline.quality.report import experiment_report
from pipeline.recsys.generator import GeneratorConfig
from tests.integration.harness import (
    RawIn,
    fresh_topology,
    read_values,
    run_pipeline_command,
    run_until_accounted,
)

pytestmark = pytest.mark.integration
EVENTS = 1500
WINDOW_MS = 600_000


async def test_outcomes_of_a_run_agree_with_a_recount_from_its_events(stack, tmp_path) -> None:
    topology = fresh_topology(stack, window={"max_events": 8})  # several windows a user: judged
    events = list(live_events(GeneratorConfig(seed=11, users=60), EVENTS))  # ~25 events a user
    for i, e in enumerate(events):  # 100 ms apart in event time, the last one now
        e["ts"] = int(e["ts"]) - (EVENTS - i) * 100
    records: list[RawIn] = [(str(e["user_id"]).encode(), orjson.dumps(e), []) for e in events]
    run = await run_until_accounted(topology, records)
    assert run.ledger.summary()["lost"] == 0

    by_coord = dict(zip(run.coords, events, strict=True))
    per_user: dict[int, list[tuple[int, int, int]]] = {}  # (ts, offset, item)
    for (_, _, offset), e in by_coord.items():
        per_user.setdefault(e["user_id"], []).append((e["ts"], offset, e["item_id"]))
    shown = judged = hits = truncated = 0
    seen: set[str] = set()
    for record in await read_values(topology, topology.sink.topic):
        rec = orjson.loads(record.value)
        if rec["event_id"] in seen:
            continue  # delivered twice (at least once): one recommendation
        seen.add(rec["event_id"])
        if rec["source_count"] > len(rec["sources"]):
            truncated += 1  # its newest input may be unlisted: not judged
            continue
        answered = [
            by_coord[(s["topic"], s["partition"], s["offset"])] | {"offset": s["offset"]}
            for s in rec["sources"]
        ]
        newest = max(answered, key=lambda e: (e["ts"], e["offset"]))
        ts, offset = newest["ts"], newest["offset"]
        later = sorted(
            x for x in per_user[newest["user_id"]] if (x[0], x[1]) > (ts, offset) and x[0] - ts <= WINDOW_MS
        )
        shown += 1
        if later:
            judged += 1
            hits += later[0][2] in {i["item_id"] for i in rec["items"]}

    report = await experiment_report(topology, WINDOW_MS)
    version = report["versions"]["recommender:1"]
    assert (version["shown"], version["judged"], version["next_item_hits"]) == (shown, judged, hits)
    assert report["unjudgeable_truncated_sources"] == truncated
    assert 0 < judged < shown  # each user's last recommendation has no next event
    low, high = version["hit_rate_95"]
    assert low <= version["hit_rate"] <= high and version["e2e_p99_ms"] >= version["e2e_p50_ms"] > 0

    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology_document(topology)))
    done = run_pipeline_command("experiment", path, "--attribution-ms", str(WINDOW_MS))
    assert done.returncode == 0, done.stderr[-2000:]
    printed = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert printed["versions"]["recommender:1"]["judged"] == judged
