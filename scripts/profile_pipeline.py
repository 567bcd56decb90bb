"""Profile `pipeline run` on the embedded stack: N events pre-loaded for distinct users, the
pipeline started as its own process with py-spy attached until every event is answered.

Prints the rate, the CPU seconds per 1,000 events of the pipeline process and the functions
that take the most of its samples (self and total), and writes py-spy's collapsed stacks
(`--out`, for flamegraph tools or speedscope).

    python scripts/profile_pipeline.py [--events 30000] [--top 30] [--out var/profile/stacks.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys
import time
from pathlib import Path

import orjson

from pipeline import kafka_clients, procfs
from pipeline.devstack.process import ChildProcess
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.worker import PipelineProcess
from pipeline.kafka_io import ensure_topology_topics
from pipeline.topology.schema import Topology

ROOT = Path(__file__).resolve().parent.parent


async def preload(topology: Topology, events: int) -> None:
    """``events`` valid events, one per user, spread over the input's partitions."""
    producer = kafka_clients.producer(topology.broker, client_suffix="-profile", linger_ms=20)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        futures = []
        for i in range(events):
            doc = {"event_id": f"p-{i}", "user_id": i + 1, "item_id": 1 + i % 500, "type": "view", "ts": now}
            futures.append(
                await producer.send(topology.source.topics[0], orjson.dumps(doc), key=str(i + 1).encode())
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def user_system(pid: int) -> tuple[float, float]:
    """CPU seconds in user space and in the kernel (system calls: sockets, epoll)."""
    stat = procfs.stat(pid)
    return stat.user_s, stat.system_s


def answered(worker: PipelineProcess) -> float:
    total = 0.0
    for line in worker.metrics().splitlines():
        if line.startswith(("pipeline_recommendations_total", "pipeline_dead_letters_total")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def summarize(stacks: Path, top: int) -> None:
    """The functions with the most samples: self (innermost frame) and total (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames.rsplit(";", 1)[-1].startswith("Thread.run "):
            continue  # a thread waiting in native code (gRPC's poller): py-spy counts it, it uses no CPU
        n = int(count)
        samples += n
        names = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in frames.split(";")]
        own[names[-1]] += n
        for name in set(names):
            anywhere[name] += n
    print(f"\n{samples} samples; self:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print("total:")
    for name, n in anywhere.most_common(top):
        print(f"  {100 * n / samples:5.1f}%  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "profile")
    parser.add_argument(
        "--out", type=Path, default=None, help="collapsed stacks (default: WORKDIR/stacks.txt)"
    )
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    args = parser.parse_args()
    out = args.out or args.workdir / "stacks.txt"
    stack = EmbeddedStack.start(args.workdir)
    try:
        topology = Topology.model_validate(topology_on_stack(stack))
        asyncio.run(ensure_topology_topics(topology, 4))
        asyncio.run(preload(topology, args.events))
        # py-spy attaches as the worker starts (it consumes the pre-loaded events as soon as
        # it is ready); the rate and CPU count from its first answer on
        worker = PipelineProcess(topology, args.workdir)
        worker.start()
        spy = ChildProcess(
            "py-spy",
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(worker.pid),
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                *(["--native"] if args.native else []),
                # only samples holding the GIL: a thread blocked in a call that released it
                # (epoll, a socket send, gRPC's own waits) is not using Python's CPU
                "--gil",
                "--output",
                str(out),
            ],
            args.workdir / "py-spy.log",
        )
        try:
            spy.start()
            worker.wait_until(worker.ready, 60, "ready")
            while (first := answered(worker)) == 0:
                time.sleep(0.02)
            cpu0, threads0, t0 = (
                procfs.cpu_seconds(worker.pid),
                procfs.thread_cpu_seconds(worker.pid),
                time.monotonic(),
            )
            split0 = user_system(worker.pid)
            while (done := answered(worker)) < args.events and time.monotonic() - t0 < 600:
                time.sleep(0.2)
            elapsed, cpu = time.monotonic() - t0, procfs.cpu_seconds(worker.pid) - cpu0
            threads = {n: c - threads0.get(n, 0.0) for n, c in procfs.thread_cpu_seconds(worker.pid).items()}
            user, system = (b - a for a, b in zip(split0, user_system(worker.pid), strict=True))
            spy.signal(signal.SIGINT, group=False)  # py-spy writes its file on SIGINT
            deadline = time.monotonic() + 30
            while spy.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            spy.stop()
            worker.stop(worker.stop_grace_s)
        measured = done - first
        print(
            f"{measured:.0f} events in {elapsed:.1f} s: {measured / elapsed:,.0f} ev/s, "
            f"{1000 * cpu / measured:.3f} CPU s per 1,000 events (pipeline process)"
        )
        print(f"user {100 * user / max(cpu, 1e-9):.0f}%, kernel {100 * system / max(cpu, 1e-9):.0f}%")
        print(
            "CPU by thread: "
            + ", ".join(
                f"{n} {100 * c / cpu:.0f}%" for n, c in sorted(threads.items(), key=lambda x: -x[1]) if c > 0
            )
        )
        summarize(out, args.top)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
