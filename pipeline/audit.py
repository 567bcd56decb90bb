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

    def take_latencies(self) -> list[float]:
        """Latencies of the outputs seen since the last call whose input is known (the rest
        wait for their input's acknowledgement), also kept for the summary."""
        taken, waiting = [], []
        for coord, ts in self._pending_latency:
            if coord in self.inputs:
                taken.append(float(ts - self.inputs[coord]))
            else:
                waiting.append((coord, ts))
        self._pending_latency = waiting
        self.latencies_ms.extend(taken)
        return taken

    def unanswered(self, older_than_ms: int) -> int:
        """Inputs produced before ``older_than_ms`` (epoch ms) with no output yet."""
        return sum(1 for c, ts in self.inputs.items() if ts < older_than_ms and not self.outputs[c])

    def summary(self) -> dict[str, object]:
        self.take_latencies()
        self._pending_latency.clear()
        missing = [c for c in self.inputs if not self.outputs[c]]
        lost = len(missing)
        duplicates = sum(n - 1 for c, n in self.outputs.items() if n > 1 and c in self.inputs)
        first_in = min(self.inputs.values(), default=0)
        span_s = max(1e-3, (self.last_output_ms - first_in) / 1000.0)
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "events_in": len(self.inputs),
            "recommendations": self.recommendations,
            "dead_letters": self.dead_letters,
            "lost": lost,
            "lost_examples": [f"{t}[{p}]@{o}" for t, p, o in sorted(missing)[:5]],
            "duplicates": duplicates,
            "dead_letter_reasons": dict(self.dead_letter_reasons),
            "throughput_eps": round(len(self.inputs) / span_s, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
        }


def combined_summary(ledgers: list[Ledger]) -> dict[str, object]:
    """One summary over ledgers of separate broker epochs: offsets restart with a fresh
    broker, so each epoch's coordinates are kept apart by its index."""
    if len(ledgers) == 1:
        return ledgers[0].summary()
    merged = Ledger()
    for i, ledger in enumerate(ledgers):
        ledger.take_latencies()
        merged.inputs.update({(f"{i}/{t}", p, o): ts for (t, p, o), ts in ledger.inputs.items()})
        merged.outputs.update({(f"{i}/{t}", p, o): n for (t, p, o), n in ledger.outputs.items()})
        merged.recommendations += ledger.recommendations
        merged.dead_letters += ledger.dead_letters
        merged.dead_letter_reasons.update(ledger.dead_letter_reasons)
        merged.latencies_ms.extend(ledger.latencies_ms)
        merged.last_output_ms = max(merged.last_output_ms, ledger.last_output_ms)
    return merged.summary()


async def audit_topology(topology: Topology) -> dict[str, object]:
    """Read input, output and dead-letter topics of a topology to their current ends."""
    bootstrap = topology.broker.bootstrap_servers
    ledger = Ledger()
    for topic in topology.source.topics:
        async for rec in read_to_end(bootstrap, topic):
            ledger.add_input((rec.topic, rec.partition, rec.offset), rec.timestamp_ms)
    async for rec in read_to_end(bootstrap, topology.sink.topic):
        ledger.add_recommendation(rec.value or b"", rec.timestamp_ms)
    async for rec in read_to_end(bootstrap, topology.sink.dead_letter_topic):
        ledger.add_dead_letter(list(rec.headers), rec.timestamp_ms)
    summary = ledger.summary()
    return {
        k: summary[k]
        for k in (
            "events_in",
            "recommendations",
            "dead_letters",
            "lost",
            "lost_examples",
            "duplicates",
            "dead_letter_reasons",
        )
    }
