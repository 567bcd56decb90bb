"""Backpressure under overload: the pipeline's resident memory stays flat.

Starts the embedded stack and a `pipeline run` process with deliberately small inference
capacity, measures that capacity (events finished per second) during a warm-up, then
produces at 10x that rate for 60 s while sampling the pipeline's RSS, its in-flight events
and whether its source is paused. Kafka's lag, not the pipeline's memory, absorbs the
burst. Prints a table and a verdict, writes a PNG plot.

    python scripts/overload_memory.py [--seconds 60] [--factor 10] [--out var/overload.png]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import yaml

from pipeline import kafka_clients, procfs
from pipeline.devstack.process import ChildProcess, free_port
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import broker_at, ensure_topics
from pipeline.recsys.generator import EventGenerator, GeneratorConfig

ROOT = Path(__file__).resolve().parent.parent


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def feed(bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    """Produce at ``rate`` events/s for ``seconds`` (rate 0: as fast as possible)."""
    producer = kafka_clients.producer(broker_at(bootstrap), linger_ms=20, max_batch_size=1_048_576)
    await producer.start()
    # Many distinct users: little per-user coalescing, so capacity does not grow with backlog.
    gen = EventGenerator(GeneratorConfig(users=1_000_000, seed=int(time.time())))
    sent, start = 0, time.monotonic()
    try:
        for event in gen.events(10**9):
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            event["ts"] = time.time_ns() // 1_000_000
            await producer.send(topic, orjson.dumps(event), key=str(event["user_id"]).encode())
            sent += 1
            if rate > 0 and sent % 200 == 0:
                ahead = sent / rate - elapsed
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif sent % 2000 == 0:
                await asyncio.sleep(0)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def sample(
    proc: ChildProcess, port: int, seconds: float, rows: list[dict[str, float]], t0: float, phase: str
) -> None:
    end = time.monotonic() + seconds
    last_done, last_t = None, None
    while time.monotonic() < end:
        text = scrape(port)
        now = time.monotonic()
        done = metric(text, "pipeline_events_finished_total")
        rate = (done - last_done) / (now - last_t) if last_done is not None and last_t else 0.0
        rows.append(
            {
                "t": round(now - t0, 1),
                "phase": phase,
                "rss_mb": round(procfs.rss_mb(proc.pid) or 0.0, 1),
                "in_flight": metric(text, "pipeline_in_flight_events"),
                "paused": metric(text, "pipeline_source_paused"),
                "consumed": metric(text, 'pipeline_events_consumed_total{topic="interactions"}'),
                "finished": done,
                "finish_rate": round(rate, 0),
            }
        )
        last_done, last_t = done, now
        await asyncio.sleep(2)


async def run(args: argparse.Namespace, stack: EmbeddedStack, workdir: Path) -> int:
    port = free_port()
    # the shipped topic names: the load generator below writes "interactions"
    data = topology_on_stack(stack, fresh=False, model={"max_in_flight": 1})
    data["batch"]["max_size"] = 16  # small capacity on purpose: overload must be reachable
    data["window"]["max_events"] = 512
    # Infer every event however late: otherwise the stale policy dead-letters the backlog
    # fast and "capacity" would jump once events pass their deadline.
    data["deadline"] = {"stale_policy": "best_effort"}
    data["operations"]["metrics_port"] = port
    data["source"]["credits"] = {"high_watermark": 5000, "low_watermark": 2500}
    topology_file = workdir / "overload.yaml"
    topology_file.write_text(yaml.safe_dump(data))
    await ensure_topics(
        broker_at(stack.broker.bootstrap), ["interactions", "recommendations", "interactions.dlq"], 4
    )
    proc = ChildProcess(
        "pipeline",
        [sys.executable, "-m", "pipeline", "run", str(topology_file)],
        workdir / "pipeline.log",
        cwd=ROOT,
    )
    proc.start()
    try:
        proc.wait_until(lambda: "running" in proc.tail(5), 60, "running")
        rows: list[dict[str, float]] = []
        t0 = time.monotonic()
        # Warm-up: saturate the pipeline to measure its capacity and settle its memory.
        await asyncio.gather(
            feed(stack.broker.bootstrap, "interactions", 0, 20), sample(proc, port, 20, rows, t0, "warm-up")
        )
        capacity = sum(r["finish_rate"] for r in rows[-5:]) / 5
        baseline = rows[-1]["rss_mb"]
        target = args.factor * capacity
        print(
            f"capacity {capacity:.0f} ev/s; overload at {target:.0f} ev/s for {args.seconds}s; "
            f"RSS after warm-up {baseline:.1f} MB",
            flush=True,
        )
        start = time.monotonic()
        sent, _ = await asyncio.gather(
            feed(stack.broker.bootstrap, "interactions", target, args.seconds),
            sample(proc, port, args.seconds, rows, t0, "overload"),
        )
        achieved = sent / (time.monotonic() - start)
    finally:
        proc.stop()

    print(
        f"\n{'t_s':>6} {'phase':>9} {'rss_mb':>8} {'in_flight':>9} {'paused':>6} "
        f"{'consumed':>9} {'finish_rate':>11}"
    )
    for r in rows:
        print(
            f"{r['t']:>6} {r['phase']:>9} {r['rss_mb']:>8} {r['in_flight']:>9.0f} "
            f"{r['paused']:>6.0f} {r['consumed']:>9.0f} {r['finish_rate']:>11.0f}"
        )
    overload = [r for r in rows if r["phase"] == "overload"]
    growth = max(r["rss_mb"] for r in overload) - baseline
    print(
        f"\ninput rate achieved {achieved:.0f} ev/s = {achieved / max(capacity, 1):.1f}x capacity; "
        f"max RSS growth over warm-up {growth:+.1f} MB (bound: 50 MB); "
        f"max in-flight {max(r['in_flight'] for r in overload):.0f} (high watermark 5000)"
    )
    plot(rows, baseline, Path(args.out))
    print(f"plot: {args.out}")
    return 0 if growth <= 50 else 1


def plot(rows: list[dict[str, float]], baseline: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [r["rss_mb"] for r in rows], label="pipeline RSS (MB)", color="tab:blue")
    ax.axhline(baseline + 50, color="tab:red", linestyle="--", label="warm-up RSS + 50 MB")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax2 = ax.twinx()
    ax2.plot(t, [r["in_flight"] for r in rows], color="tab:green", alpha=0.6, label="in-flight events")
    ax2.set_ylabel("events in flight")
    fig.legend(loc="upper left")
    ax.set_title("10x overload: memory stays flat, the source pauses")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("var/overload"))
    parser.add_argument("--out", default="var/overload.png")
    args = parser.parse_args()
    stack = EmbeddedStack.start(args.workdir, Path("var/devstack/model_repository"))
    try:
        return asyncio.run(run(args, stack, args.workdir.resolve()))
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
