"""Benchmark: fixed vs adaptive batching over a load ramp, with two priority lanes.

On the embedded stack (real broker, real Triton, the real MF model), each mode runs the
pipeline in-process on fresh topics while a load generator ramps the input rate in steps.
Purchases (5 % of events) ride the high-priority lane, views and clicks the low one, so the
ramp is also a low-priority flood. Per mode, step and lane it reports throughput and
end-to-end latency (input produce timestamp → recommendation produce timestamp), then
writes a markdown table and a PNG plot. All modes run in one process, one after the other,
on the same machine: compare them with each other, not with other runs.

    python scripts/bench_adaptive.py [--steps 500,1000,2000,4000,8000] [--step-seconds 8]
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.devstack.stack import EmbeddedStack
from pipeline.kafka_io import ensure_topics
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.runtime import PipelineRuntime
from pipeline.topology.schema import Topology

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 50.0
LANES = [
    {
        "id": "purchases",
        "match": {"field": "type", "values": ["purchase"]},
        "weight": 8,
        "max_wait_ms": 20,
        "max_in_flight": 4,
        "triton_priority": 1,
    },
    {"id": "browsing", "weight": 1, "max_wait_ms": 1000, "max_in_flight": 16, "triton_priority": 2},
]
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
            "interval_ms": 500,
        }
    },
}


def topology_for(stack: EmbeddedStack, mode: str) -> Topology:
    data = yaml.safe_load((ROOT / "topologies" / "recommendations.yaml").read_text())
    tag = uuid.uuid4().hex[:8]
    data["broker"]["bootstrap_servers"] = stack.broker.bootstrap
    data["model"]["url"] = stack.triton.grpc_url
    data["source"].update({"topics": [f"bench-in-{tag}"], "group_id": f"bench-{tag}"})
    data["sink"].update({"topic": f"bench-out-{tag}", "dead_letter_topic": f"bench-dlq-{tag}"})
    data["deadline"] = {"stale_policy": "best_effort"}  # measure latency, do not drop
    data["lanes"] = LANES
    data.pop("adaptive", None)
    for section, values in MODES[mode].items():
        data.setdefault(section, {}).update(values)
    return Topology.model_validate(data)


async def produce_ramp(
    topology: Topology, steps: list[int], step_s: float, inputs: dict[tuple[str, int, int], tuple[int, int]]
) -> None:
    """inputs: coord → (produce timestamp ms, step index)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=topology.broker.bootstrap_servers, enable_idempotence=False, linger_ms=2
    )
    await producer.start()
    gen = EventGenerator(GeneratorConfig(users=50_000, seed=int(time.time())))
    events = gen.events(10**9)
    try:
        for step, rate in enumerate(steps):
            start, sent, pending = time.monotonic(), 0, []
            while (elapsed := time.monotonic() - start) < step_s:
                event = next(events)
                event["ts"] = time.time_ns() // 1_000_000
                pending.append(
                    await producer.send(
                        topology.source.topics[0], orjson.dumps(event), key=str(event["user_id"]).encode()
                    )
                )
                sent += 1
                if sent % 50 == 0:
                    ahead = sent / rate - elapsed
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            for meta in await asyncio.gather(*pending):
                inputs[(meta.topic, meta.partition, meta.offset)] = (meta.timestamp, step)
    finally:
        await producer.stop()


async def collect(
    topology: Topology, stop: asyncio.Event, outputs: list[tuple[str, int, list[tuple[str, int, int]]]]
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=topology.broker.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    tps = [TopicPartition(topology.sink.topic, p) for p in range(4)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for rec in records:
                    doc = orjson.loads(rec.value)
                    outputs.append(
                        (
                            doc["lane"],
                            rec.timestamp,
                            [(s["topic"], s["partition"], s["offset"]) for s in doc["sources"]],
                        )
                    )
    finally:
        await consumer.stop()


async def run_mode(stack: EmbeddedStack, mode: str, steps: list[int], step_s: float) -> list[dict[str, Any]]:
    topology = topology_for(stack, mode)
    await ensure_topics(
        topology.broker.bootstrap_servers,
        [*topology.source.topics, topology.sink.topic, topology.sink.dead_letter_topic],
        4,
    )
    runtime = PipelineRuntime(topology)
    stop, collect_stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    outputs: list[tuple[str, int, list[tuple[str, int, int]]]] = []
    collector = asyncio.create_task(collect(topology, collect_stop, outputs))
    await asyncio.wait_for(runtime.ready.wait(), 60)
    await asyncio.sleep(3)  # the group settles before the clock starts
    inputs: dict[tuple[str, int, int], tuple[int, int]] = {}
    await produce_ramp(topology, steps, step_s, inputs)
    deadline = time.monotonic() + 60
    while sum(len(o[2]) for o in outputs) < len(inputs) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    await task
    collect_stop.set()
    await collector
    latencies: dict[tuple[int, str], list[float]] = defaultdict(list)
    last_out: dict[int, int] = defaultdict(int)
    first_in: dict[int, int] = {}
    for ts, step in inputs.values():
        first_in[step] = min(first_in.get(step, ts), ts)
    for lane, out_ts, sources in outputs:
        for coord in sources:
            if coord in inputs:
                in_ts, step = inputs[coord]
                latencies[(step, lane)].append(out_ts - in_ts)
                last_out[step] = max(last_out[step], out_ts)
    rows = []
    for step, rate in enumerate(steps):
        step_events = sum(len(v) for (s, _), v in latencies.items() if s == step)
        span_s = max(step_s, (last_out[step] - first_in.get(step, 0)) / 1000.0)
        for lane in [lane["id"] for lane in LANES]:
            lat = latencies.get((step, lane))
            if not lat:
                continue
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            rows.append(
                {
                    "mode": mode,
                    "offered": rate,
                    "lane": lane,
                    "throughput": round(step_events / span_s),
                    "events": len(lat),
                    "p50": round(p50, 1),
                    "p95": round(p95, 1),
                    "p99": round(p99, 1),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | offered ev/s | delivered ev/s | lane | events | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " ✗" if r["p99"] > TARGET_P99_MS else ""
        lines.append(
            f"| {r['mode']} | {r['offered']} | {r['throughput']} | {r['lane']} | "
            f"{r['events']} | {r['p50']} | {r['p95']} | {r['p99']}{mark} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in MODES:
        for lane, style in (("purchases", "-"), ("browsing", "--")):
            sel = [r for r in rows if r["mode"] == mode and r["lane"] == lane]
            ax1.plot(
                [r["offered"] for r in sel],
                [r["p99"] for r in sel],
                style,
                marker="o",
                label=f"{mode} / {lane}",
            )
        sel = [r for r in rows if r["mode"] == mode and r["lane"] == "browsing"]
        ax2.plot([r["offered"] for r in sel], [r["throughput"] for r in sel], marker="o", label=mode)
    ax1.axhline(TARGET_P99_MS, color="red", linestyle=":", label="p99 target")
    ax1.set(xscale="log", yscale="log", xlabel="offered load (ev/s)", ylabel="p99 end-to-end (ms)")
    ax2.set(xscale="log", yscale="log", xlabel="offered load (ev/s)", ylabel="delivered (ev/s)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=8)
    fig.suptitle("Fixed vs adaptive batching over a load ramp (two lanes)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


async def main_async(args: argparse.Namespace, stack: EmbeddedStack) -> list[dict[str, Any]]:
    steps = [int(x) for x in args.steps.split(",")]
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        rows.extend(await run_mode(stack, mode, steps, args.step_seconds))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", default="500,1000,2000,4000,8000")
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--modes", default=",".join(MODES))
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
