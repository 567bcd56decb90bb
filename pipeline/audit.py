"""Accounting: is every input event accounted for, exactly once?

Input events are identified by their Kafka coordinates (topic, partition, offset), which
every recommendation lists in ``sources`` and every dead letter carries in its headers, so
malformed events count as well as valid ones."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipeline.kafka_io import read_to_end
from pipeline.topology.schema import Topology

Coord = tuple[str, int, int]


def dead_letter_source(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> Coord:
    h = {k: v for k, v in headers}
    return (
        h["dlq.source_topic"].decode(),
        int(h["dlq.source_partition"]),
        int(h["dlq.source_offset"]),
    )


@dataclass
class Ledger:
    inputs: dict[Coord, int] = field(default_factory=dict)  # coord → produce timestamp
    outputs: Counter[Coord] = field(default_factory=Counter)
    recommendations: int = 0
    dead_letters: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    last_output_ms: int = 0
    _pending_latency: list[tuple[Coord, int]] = field(default_factory=list)

    def add_input(self, coord: Coord, timestamp_ms: int) -> None:
        self.inputs[coord] = timestamp_ms

    def add_recommendation(self, value: bytes, timestamp_ms: int) -> None:
        self.recommendations += 1
        self.last_output_ms = max(self.last_output_ms, timestamp_ms)
        for src in orjson.loads(value)["sources"]:
            coord = (src["topic"], src["partition"], src["offset"])
            self.outputs[coord] += 1
            self._pending_latency.append((coord, timestamp_ms))

    def add_dead_letter(self, headers: list[tuple[str, bytes]], timestamp_ms: int) -> None:
        self.dead_letters += 1
        self.last_output_ms = max(self.last_output_ms, timestamp_ms)
        coord = dead_letter_source(headers)
        self.outputs[coord] += 1
        self.dead_letter_reasons[dict(headers).get("dlq.reason", b"?").decode()] += 1

    def accounted(self) -> int:
        return sum(1 for c in self.inputs if self.outputs[c])

    def summary(self) -> dict[str, object]:
        for coord, ts in self._pending_latency:
            if coord in self.inputs:
                self.latencies_ms.append(ts - self.inputs[coord])
        self._pending_latency.clear()
        lost = sum(1 for c in self.inputs if not self.outputs[c])
        duplicates = sum(n - 1 for c, n in self.outputs.items() if n > 1 and c in self.inputs)
        first_in = min(self.inputs.values(), default=0)
        span_s = max(1e-3, (self.last_output_ms - first_in) / 1000.0)
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "events_in": len(self.inputs),
            "recommendations": self.recommendations,
            "dead_letters": self.dead_letters,
            "lost": lost,
            "duplicates": duplicates,
            "dead_letter_reasons": dict(self.dead_letter_reasons),
            "throughput_eps": round(len(self.inputs) / span_s, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
        }


async def audit_topology(topology: Topology) -> dict[str, object]:
    """Read input, output and dead-letter topics of a topology to their current ends."""
    bootstrap = topology.broker.bootstrap_servers
    ledger = Ledger()
    for topic in topology.source.topics:
        async for rec in read_to_end(bootstrap, topic):
            ledger.add_input((rec.topic, rec.partition, rec.offset), rec.timestamp)
    async for rec in read_to_end(bootstrap, topology.sink.topic):
        ledger.add_recommendation(rec.value or b"", rec.timestamp)
    async for rec in read_to_end(bootstrap, topology.sink.dead_letter_topic):
        ledger.add_dead_letter(list(rec.headers), rec.timestamp)
    summary = ledger.summary()
    return {
        k: summary[k]
        for k in ("events_in", "recommendations", "dead_letters", "lost", "duplicates", "dead_letter_reasons")
    }
