"""`pipeline experiment TOPOLOGY`: each model version's recommendations and their outcomes,
read from the topology's topics (pipeline/quality/outcomes.py), with hit@K's 95 % interval
and the end-to-end latency of its recommendations."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import orjson

from pipeline.audit import OUTPUT_CLOCK_SLACK_MS, TimeRange
from pipeline.kafka_io import read_to_end
from pipeline.quality.outcomes import OutcomeBooks, version_of
from pipeline.topology.schema import Topology


async def experiment_report(
    topology: Topology, attribution_ms: int, window: TimeRange | None = None
) -> dict[str, Any]:
    """The inputs produced in ``window`` (all by default) and the recommendations answering
    them, each judged by what its user did next within ``attribution_ms``."""
    window = window or TimeRange()
    books = OutcomeBooks()
    for topic in topology.source.topics:
        async for record in read_to_end(topology.broker, topic):
            if window.holds(record.timestamp_ms):
                books.add_input(record)
    latencies: dict[str, array[float]] = {}  # 8 bytes a recommendation
    outputs_since = None if window.since_ms is None else window.since_ms - OUTPUT_CLOCK_SLACK_MS
    async for record in read_to_end(topology.broker, topology.sink.topic):
        if outputs_since is not None and record.timestamp_ms < outputs_since:
            continue
        try:
            rec = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if origin := dict(record.headers).get("origin"):
            rec["origin"] = origin.decode(errors="replace")
        books.add_recommendation(rec)
        latency = (rec.get("timings") or {}).get("end_to_end_ms")
        if isinstance(latency, int | float):
            latencies.setdefault(version_of(rec), array("d")).append(float(latency))
    versions: dict[str, Any] = {}
    for version, tally in sorted(books.tallies(attribution_ms).items()):
        ms: array[float] = latencies.get(version, array("d"))
        versions[version] = tally.summary() | {
            "e2e_p50_ms": round(float(np.percentile(ms, 50)), 1) if ms else None,
            "e2e_p99_ms": round(float(np.percentile(ms, 99)), 1) if ms else None,
        }
    return {
        "attribution_ms": attribution_ms,
        "top_k": topology.model.top_k,
        "inputs_newest_ts": books.last_ts if books.last_ts > -(2**62) else None,
        "unjudgeable_truncated_sources": books.truncated,
        "versions": versions,
    }
