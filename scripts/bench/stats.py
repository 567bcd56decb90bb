"""A run's numbers from its outputs and CPU samples: the steady-state rate and CPU per event
over the 10th-90th percentile of the output times, latencies, stages, and the medians over
reps."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audit import Coord

from .config import MODELS, VARIANTS
from .sampling import Sampler


def steady(ts_ms: np.ndarray, weights: np.ndarray) -> tuple[float, float, float, float]:
    """Events per second between the 10th and 90th percentile of the timestamps: (rate,
    t10, t90, events in that span)."""
    t10, t90 = (float(x) for x in np.percentile(ts_ms, [10, 90]))
    inside = (ts_ms >= t10) & (ts_ms <= t90)
    events = float(weights[inside].sum())
    return events / max((t90 - t10) / 1000.0, 1e-3), t10, t90, events


def summarise(
    variant: str,
    model: str,
    outputs: list[tuple[int, dict[str, Any]]],
    inputs: dict[Coord, int],
    sampler: Sampler,
    rss: float,
    fetched: str,
    dump_dir: Path | None = None,
) -> dict[str, Any]:
    """Steady-state rate and CPU per 1,000 events over the 10th-90th percentile of the
    outputs' produce timestamps; latency end to end (input produce → output produce) and in
    the process (taken from Kafka → output produce: for the pipeline, from its window's
    opening, which is right after the fetch and parse)."""
    if not outputs:
        raise RuntimeError(f"{variant}/{model}: no outputs")
    ts = np.asarray([t for t, _ in outputs], dtype=np.float64)
    weights = np.asarray([doc.get("source_count", 1) for _, doc in outputs], dtype=np.float64)
    rate, t10, t90, events = steady(ts, weights)
    e2e = [
        t - inputs[(s["topic"], s["partition"], s["offset"])] for t, doc in outputs for s in doc["sources"]
    ]
    taken = [doc["window"]["start_ms"] if fetched == "window" else doc[fetched] for _, doc in outputs]
    held = [t - taken_ms for (t, _), taken_ms in zip(outputs, taken, strict=True)]
    if dump_dir is not None:  # the raw times, for a closer look
        dump_dir.mkdir(parents=True, exist_ok=True)
        np.savez(
            dump_dir / f"{variant}-{model}-{uuid.uuid4().hex[:6]}.npz",
            out=ts,
            taken=np.asarray(taken),
            cpu_t=np.asarray(sampler.times),
            cpu=np.asarray(sampler.values["consumer"]),
        )
    p = np.percentile
    return {
        "variant": variant,
        "model": model,
        "rate": rate,
        "events": int(weights.sum()),
        "cpu_consumer": 1000 * sampler.between("consumer", t10, t90) / max(events, 1),
        "cpu_triton": 1000 * sampler.between("triton", t10, t90) / max(events, 1),
        "cpu_triton_stub": 1000 * sampler.between("triton_stub", t10, t90) / max(events, 1),
        "faults_consumer": 1000 * sampler.between("consumer", t10, t90, faults=True) / max(events, 1),
        "faults_triton_stub": 1000 * sampler.between("triton_stub", t10, t90, faults=True) / max(events, 1),
        "cpu_broker": 1000 * sampler.between("broker", t10, t90) / max(events, 1),
        "rss_mb": rss,
        "e2e_p50": float(p(e2e, 50)),
        "e2e_p99": float(p(e2e, 99)),
        "proc_p50": float(p(held, 50)),
        "proc_p99": float(p(held, 99)),
        # events over first take → last output: a check on the steady rate
        "span_rate": float(weights.sum()) / max((ts.max() - min(taken)) / 1000.0, 1e-3),
        "span_s": (ts.max() - min(taken)) / 1000.0,
    }


STAGES = ("to window close", "queued", "inference", "to output")


def stages(outputs: list[tuple[int, dict[str, Any]]], inputs: dict[Coord, int]) -> dict[str, list[float]]:
    """Where a recommendation's time went, p50 and p99 per stage, from its own timings: input
    produce → its window's close (producer linger, broker, fetch, parse and the wait in the
    window: the output does not say when its event was taken), waiting for an inference
    slot, inference, then enrich and produce until the output's timestamp."""
    parts: dict[str, list[float]] = {name: [] for name in STAGES}
    for t, doc in outputs:
        first = doc["sources"][0]
        produced = inputs[(first["topic"], first["partition"], first["offset"])]
        closed, timings = doc["window"]["end_ms"], doc["timings"]
        answered = closed + timings["queued_ms"] + timings["inference_ms"]
        values = (closed - produced, timings["queued_ms"], timings["inference_ms"], t - answered)
        for name, value in zip(STAGES, values, strict=True):
            parts[name].append(value)
    return {name: [float(np.percentile(v, 50)), float(np.percentile(v, 99))] for name, v in parts.items()}


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for model in MODELS:
        for variant in VARIANTS:
            sel = [r for r in rows if r["model"] == model and r["variant"] == variant]
            if not sel:
                continue
            agg: dict[str, Any] = {"runs": len(sel)}
            for key in ("rate", "cpu_consumer", "cpu_triton", "cpu_broker", "rss_mb", "events"):
                agg[key] = median([r[key] for r in sel])
            for key in ("e2e_p50", "e2e_p99", "proc_p50", "proc_p99"):
                vals = [r[key] for r in sel if r[key] is not None]
                agg[key] = median(vals) if vals else None
            agg["rate_min"] = min(r["rate"] for r in sel)
            agg["rate_max"] = max(r["rate"] for r in sel)
            agg["cpu_min"] = min(r["cpu_consumer"] for r in sel)
            agg["cpu_max"] = max(r["cpu_consumer"] for r in sel)
            agg["shapes"] = [r["shape"] for r in sel if "shape" in r]
            agg["dead_letters"] = sum(r.get("dead_letters", 0) for r in sel)
            out[(model, variant)] = agg
    return out
