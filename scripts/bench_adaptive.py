"""Benchmark: fixed vs adaptive batching over a load ramp, and priority lanes under a flood.

On the embedded stack (real broker, real Triton, the real MF model) each run starts the
pipeline in-process on fresh topics while a load generator produces. Latency is end to end:
input produce timestamp → recommendation produce timestamp.

1. ramp: the input rate rises in steps; modes fixed-small, fixed-large and adaptive.
2. flood: live traffic at a steady rate on one topic (lane "live", high priority) while a
   backfill floods another topic far past capacity (lane "backfill", low priority).

Writes a markdown table and a PNG plot. Every mode runs in this one process, one after the
other, on the same machine: compare them with each other, not with other runs.

    python scripts/bench_adaptive.py [--steps 500,1000,2000,3000] [--step-seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from aiokafka import TopicPartition

from pipeline import kafka_clients
from pipeline.audit import Coord
from pipeline.devstack.process import ChildProcess
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.worker import topology_document
from pipeline.kafka_io import ensure_topology_topics, seek_to_start
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.topology.schema import Topology

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = (ROOT / "var" / "bench").resolve()
TARGET_P99_MS = 50.0
LIVE_BOUND_MS = 100.0  # the live lane's p99 bound during the flood
MODES: dict[str, dict[str, Any]] = {
    "fixed-small": {"batch": {"max_size": 16}, "window": {"max_ms": 2}, "model": {"max_in_flight": 2}},
    "fixed-large": {"batch": {"max_size": 256}, "window": {"max_ms": 50}, "model": {"max_in_flight": 8}},
    "adaptive": {
        "adaptive": {
            "enabled": True,
            "target_p99_ms": TARGET_P99_MS,
            "min_batch": 8,
            "max_batch": 256,
            "min_window_ms": 2,
            "max_window_ms": 50,
            "min_in_flight": 1,
            "max_in_flight": 16,
            "interval_ms": 250,
        }
    },
}
# An output as the bench sees it: lane, produce timestamp, source records, and where its
# time went (window open/close, queued for a slot, inference), from the output event itself.
Output = tuple[str, int, list[Coord], dict[str, float]]


def topology_for(stack: EmbeddedStack, mode: str, lanes: bool) -> Topology:
    data = topology_on_stack(stack, fresh=False)  # its own topic names, set below
    tag = uuid.uuid4().hex[:8]
    live, backfill = f"bench-live-{tag}", f"bench-backfill-{tag}"
    data["source"].update({"topics": [live, backfill] if lanes else [live], "group_id": f"bench-{tag}"})
    data["sink"].update({"topic": f"bench-out-{tag}", "dead_letter_topic": f"bench-dlq-{tag}"})
    data["deadline"] = {"stale_policy": "best_effort"}  # measure latency, do not drop
    data["source"]["max_poll_records"] = 500  # shorter synchronous bursts on the event loop
    if lanes:
        # A topic's credits are the burst a flood can pour into the pipeline at once (fetched
        # and parsed ahead of its ration): keep it to about a second of backfill.
        data["source"]["credits"] = {"high_watermark": 2000, "low_watermark": 1000}
    data["lanes"] = (
        [
            {
                "id": "live",
                "match": {"topics": [live]},
                "weight": 8,
                "max_wait_ms": 20,
                "max_in_flight": 6,
                "triton_priority": 1,
                "p99_bound_ms": LIVE_BOUND_MS,  # the lane guard rations backfill past it
            },
            {
                "id": "backfill",
                "weight": 1,
                "max_wait_ms": 2000,
                "max_in_flight": 2,
                "triton_priority": 3,
                "max_batch": 32,
                "min_rate": 200,
                "rate_step": 200,
            },
        ]
        if lanes
        else [{"id": "live"}]
    )
    data.pop("adaptive", None)
    for section, values in MODES[mode].items():
        data.setdefault(section, {}).update(values)
    return Topology.model_validate(data)


async def produce(
    topology: Topology,
    topic: str,
    steps: list[int],
    step_s: float,
    inputs: dict[Coord, tuple[int, int]],
    users: int = 50_000,
) -> None:
    """Produce ``steps`` rates for ``step_s`` each; inputs: coord → (produce ts ms, step)."""
    producer = kafka_clients.producer(topology.broker, linger_ms=2)
    await producer.start()
    events = EventGenerator(GeneratorConfig(users=users, seed=int(time.time()))).events(10**9)
    try:
        for step, rate in enumerate(steps):
            start, sent, pending = time.monotonic(), 0, []
            while (elapsed := time.monotonic() - start) < step_s:
                event = next(events)
                event["ts"] = time.time_ns() // 1_000_000
                pending.append(
                    await producer.send(topic, orjson.dumps(event), key=str(event["user_id"]).encode())
                )
                sent += 1
                if sent % 20 == 0:
                    ahead = sent / rate - elapsed
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            for meta in await asyncio.gather(*pending):
                inputs[(meta.topic, meta.partition, meta.offset)] = (meta.timestamp, step)
    finally:
        await producer.stop()


async def collect(topology: Topology, stop: asyncio.Event, outputs: list[Output]) -> None:
    consumer = kafka_clients.consumer(topology.broker, fetch_max_wait_ms=20)
    await consumer.start()
    tps = [TopicPartition(topology.sink.topic, p) for p in range(4)]
    consumer.assign(tps)
    seek_to_start(consumer, tps)
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for rec in records:
                    doc = orjson.loads(rec.value)
                    stages = {
                        "window_start": doc["window"]["start_ms"],
                        "window": doc["window"]["end_ms"] - doc["window"]["start_ms"],
                        "queued": doc["timings"]["queued_ms"],
                        "inference": doc["timings"]["inference_ms"],
                    }
                    sources = [(s["topic"], s["partition"], s["offset"]) for s in doc["sources"]]
                    outputs.append((doc["lane"], rec.timestamp, sources, stages))
    finally:
        await consumer.stop()


async def run_pipeline(
    topology: Topology, load: Any, settle_s: float = 60
) -> tuple[dict[Coord, tuple[int, int]], list[Output]]:
    await ensure_topology_topics(topology, 4)
    # The pipeline runs as its own process, as in production: the load generator must not
    # share its event loop.
    config = WORKDIR / f"{topology.source.group_id}.yaml"
    config.write_text(yaml.safe_dump(topology_document(topology)))  # secrets kept, not masked
    proc = ChildProcess(
        "pipeline",
        [sys.executable, "-m", "pipeline", "run", str(config)],
        config.with_suffix(".log"),
        cwd=ROOT,
    )
    proc.start()
    collect_stop = asyncio.Event()
    outputs: list[Output] = []
    collector = asyncio.create_task(collect(topology, collect_stop, outputs))
    await asyncio.to_thread(proc.wait_until, lambda: "running" in proc.tail(5), 60, "running")
    await asyncio.sleep(3)  # the group settles before the clock starts
    inputs: dict[Coord, tuple[int, int]] = {}
    await load(inputs)
    deadline = time.monotonic() + settle_s
    while sum(len(o[2]) for o in outputs) < len(inputs) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.to_thread(proc.stop)
    collect_stop.set()
    await collector
    return inputs, outputs


def summarise(
    case: str,
    mode: str,
    steps: list[int],
    step_s: float,
    inputs: dict[Coord, tuple[int, int]],
    outputs: list[Output],
    lane_of_topic: dict[str, str],
) -> list[dict[str, Any]]:
    latencies: dict[tuple[int, str], list[float]] = defaultdict(list)
    stages: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    span: dict[tuple[int, str], list[int]] = {}  # first input, last output (ms)
    for out_lane, out_ts, sources, timings in outputs:
        # An event counts for its own topic's lane: a user with a live and a backfill event in
        # one window gets one answer (in the live lane), and the backfill event's long wait in
        # the broker must not count as live latency.
        oldest: dict[tuple[int, str], int] = {}
        for coord in sources:
            if coord in inputs:
                in_ts, step = inputs[coord]
                key = (step, lane_of_topic.get(coord[0], out_lane))
                latencies[key].append(out_ts - in_ts)
                first, last = span.setdefault(key, [in_ts, out_ts])
                span[key] = [min(first, in_ts), max(last, out_ts)]
                oldest[key] = min(oldest.get(key, in_ts), in_ts)
        for key, in_ts in oldest.items():
            # source: the oldest input's produce → its window opening (broker, fetch, parse)
            stages[key]["source"].append(max(0.0, timings["window_start"] - in_ts))
            for name in ("window", "queued", "inference"):
                stages[key][name].append(timings[name])
    rows = []
    for (step, lane), lat in sorted(latencies.items()):
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        offered = sum(1 for _, s in inputs.values() if s == step)
        rows.append(
            {
                "case": case,
                "mode": mode,
                "offered": steps[step],
                "lane": lane,
                # answered events over the time from the step's first input to its last output
                "delivered": round(
                    len(lat) / max(step_s, (span[(step, lane)][1] - span[(step, lane)][0]) / 1000)
                ),
                "events": len(lat),
                "answered": f"{len(lat) / max(1, offered):.0%}" if case == "ramp" else "",
                "p50": round(p50, 1),
                "p95": round(p95, 1),
                "p99": round(p99, 1),
                # per-output p99 of each stage: source / window / queued / inference
                "stages": "/".join(
                    f"{np.percentile(stages[(step, lane)][name], 99):.0f}"
                    for name in ("source", "window", "queued", "inference")
                ),
            }
        )
    return rows


async def ramp(stack: EmbeddedStack, mode: str, steps: list[int], step_s: float) -> list[dict[str, Any]]:
    topology = topology_for(stack, mode, lanes=False)
    topic = topology.source.topics[0]
    inputs, outputs = await run_pipeline(
        topology, lambda inputs: produce(topology, topic, steps, step_s, inputs)
    )
    return summarise("ramp", mode, steps, step_s, inputs, outputs, {topic: "live"})


async def flood(
    stack: EmbeddedStack, mode: str, live_rate: int, flood_rate: int, seconds: float
) -> list[dict[str, Any]]:
    topology = topology_for(stack, mode, lanes=True)
    live, backfill = topology.source.topics

    async def load(inputs: dict[Coord, tuple[int, int]]) -> None:
        await asyncio.gather(
            produce(topology, live, [live_rate], seconds, inputs),
            produce(topology, backfill, [flood_rate], seconds, inputs),
        )

    inputs, outputs = await run_pipeline(topology, load, settle_s=5)
    lane_of_topic = {live: "live", backfill: "backfill"}
    rows = summarise("flood", mode, [live_rate], seconds, inputs, outputs, lane_of_topic)
    for row in rows:
        row["offered"] = live_rate if row["lane"] == "live" else flood_rate
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | mode | lane | offered ev/s | delivered ev/s | answered | p50 ms | p95 ms | p99 ms "
        "| stage p99 ms: source/window/queued/inference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = TARGET_P99_MS if r["case"] == "ramp" else LIVE_BOUND_MS
        mark = " ✗" if r["p99"] > bound and r["lane"] == "live" else ""
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['lane']} | {r['offered']} | "
            f"{r['delivered']} | {r['answered']} | {r['p50']} | {r['p95']} | "
            f"{r['p99']}{mark} | {r['stages']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    for mode in MODES:
        sel = [r for r in rows if r["case"] == "ramp" and r["mode"] == mode]
        if sel:
            ax1.plot([r["offered"] for r in sel], [r["p99"] for r in sel], marker="o", label=mode)
            ax2.plot([r["offered"] for r in sel], [r["delivered"] for r in sel], marker="o", label=mode)
    ax1.axhline(TARGET_P99_MS, color="red", linestyle=":", label="p99 target")
    ax1.set(yscale="log", xlabel="offered (ev/s)", ylabel="p99 end-to-end (ms)", title="ramp: latency")
    ax2.set(xlabel="offered (ev/s)", ylabel="delivered (ev/s)", title="ramp: throughput")
    flood_rows = [r for r in rows if r["case"] == "flood"]
    labels = [f"{r['mode']}\n{r['lane']}" for r in flood_rows]
    ax3.bar(
        labels,
        [r["p99"] for r in flood_rows],
        color=["tab:green" if r["lane"] == "live" else "tab:gray" for r in flood_rows],
    )
    ax3.axhline(LIVE_BOUND_MS, color="red", linestyle=":", label="live p99 bound")
    ax3.set(yscale="log", ylabel="p99 end-to-end (ms)", title="flood: live vs backfill lane")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


async def main_async(args: argparse.Namespace, stack: EmbeddedStack) -> list[dict[str, Any]]:
    steps = [int(x) for x in args.steps.split(",")]
    rows: list[dict[str, Any]] = []
    for mode in filter(None, args.modes.split(",")):
        print(f"ramp: {mode} ...", file=sys.stderr, flush=True)
        rows.extend(await ramp(stack, mode, steps, args.step_seconds))
    for mode in filter(None, args.flood_modes.split(",")):
        print(f"flood: {mode} ...", file=sys.stderr, flush=True)
        rows.extend(await flood(stack, mode, args.live_rate, args.flood_rate, args.flood_seconds))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", default="500,1000,2000,3000")
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--flood-modes", default="fixed-large,adaptive")
    parser.add_argument("--live-rate", type=int, default=300)
    parser.add_argument("--flood-rate", type=int, default=6000)
    parser.add_argument("--flood-seconds", type=float, default=15.0)
    parser.add_argument("--workdir", type=Path, default=Path("var/bench"))
    parser.add_argument("--out", type=Path, default=Path("var/bench_adaptive"))
    args = parser.parse_args()
    stack = EmbeddedStack.start(args.workdir, Path("var/devstack/model_repository"))
    try:
        rows = asyncio.run(main_async(args, stack))
    finally:
        stack.stop()
    text = table(rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"\ntable: {args.out.with_suffix('.md')}  plot: {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
