"""Benchmark: Triton 2.51's queue settings and BLAS threads, measured on the real server.

Why the model config has a plain dynamic batcher and the server one BLAS thread:

1. queue: the same model served with each dynamic_batching variant; closed-loop clients
   send batches through the pipeline's own StreamPool (1 and 2 in flight). Reports latency,
   requests slower than 100 ms, rows/s and Triton's own queue and compute time.
2. blas: the Python-backend stub's CPU at a paced request rate, default BLAS threads vs one.

Writes a markdown table and a PNG plot.

    python scripts/bench_triton_queue.py [--requests 400] [--out var/bench_triton_queue]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient

from pipeline import procfs
from pipeline.devstack.stack import ensure_model
from pipeline.devstack.triton import SINGLE_THREADED_BLAS, EmbeddedTriton
from pipeline.events import UserRequest
from pipeline.recsys.train import scheduling_block
from pipeline.triton import codec
from pipeline.triton.streams import StreamPool

VARIANTS = {
    "plain (shipped)": "",
    "priority_levels 3": scheduling_block(3),
    "queue policy only": (
        "\n  default_queue_policy { allow_timeout_override: true, timeout_action: REJECT }"
    ),
}
SIG = codec.ModelSignature("recommender", "", 16, 10)
SLOW_MS = 100.0


def model_copy(source: Path, target: Path, scheduling: str) -> Path:
    """A copy of the model repository whose dynamic_batching carries ``scheduling``."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    config = target / "recommender" / "config.pbtxt"
    head, tail = config.read_text().split("dynamic_batching {", 1)
    depth, end = 1, 0
    while depth:  # the block's closing brace (a queue policy nests one)
        depth += {"{": 1, "}": -1}.get(tail[end], 0)
        end += 1
    delay = next(line for line in tail[:end].splitlines() if "max_queue_delay" in line).strip()
    config.write_text(f"{head}dynamic_batching {{\n  {delay}{scheduling}\n}}{tail[end:]}")
    return target


def rows(rng: np.random.Generator, n: int) -> list[UserRequest]:
    return [
        UserRequest(int(rng.integers(0, 2000)), tuple(int(x) for x in rng.integers(0, 5000, 16)), ())
        for _ in range(n)
    ]


async def closed_loop(url: str, variant: str, requests: int) -> list[dict[str, Any]]:
    pool = StreamPool(url, 2, 100_000)
    client = grpcclient.InferenceServerClient(url)
    if not await pool.model_ready("recommender", "", 60):
        raise RuntimeError("model not ready")
    rng, serial = np.random.default_rng(0), 0
    out: list[dict[str, Any]] = []
    try:
        for batch in (16, 64):
            batch_rows = rows(rng, batch)
            for in_flight in (1, 2):
                stats = (await client.get_inference_statistics("recommender")).model_stats[0]
                before = stats.inference_stats
                latencies: list[float] = []

                async def worker(
                    count: int, rows_: list[UserRequest] = batch_rows, latencies: list[float] = latencies
                ) -> None:
                    nonlocal serial
                    for _ in range(count):
                        serial += 1
                        started = time.perf_counter()
                        await pool.pick().submit(codec.encode(rows_, SIG, f"bench-{serial}", priority=1))
                        latencies.append((time.perf_counter() - started) * 1000)

                started = time.perf_counter()
                await asyncio.gather(*(worker(requests // in_flight) for _ in range(in_flight)))
                elapsed = time.perf_counter() - started
                stats = (await client.get_inference_statistics("recommender")).model_stats[0]
                after = stats.inference_stats
                out.append(
                    {
                        "variant": variant,
                        "batch": batch,
                        "in_flight": in_flight,
                        "p50": round(float(np.percentile(latencies, 50)), 1),
                        "p99": round(float(np.percentile(latencies, 99)), 1),
                        "slow": sum(1 for x in latencies if x > SLOW_MS),
                        "rows_per_s": round(len(latencies) * batch / elapsed),
                        "queue_ms": round((after.queue.ns - before.queue.ns) / 1e6),
                        "compute_ms": round((after.compute_infer.ns - before.compute_infer.ns) / 1e6),
                    }
                )
                print(out[-1], file=sys.stderr, flush=True)
    finally:
        await pool.close()
        await client.close()
    return out


async def paced(url: str, server_pid: int, label: str, seconds: float = 5.0) -> list[dict[str, Any]]:
    pool = StreamPool(url, 2, 100_000)
    if not await pool.model_ready("recommender", "", 60):
        raise RuntimeError("model not ready")
    rng, serial = np.random.default_rng(1), 0
    out: list[dict[str, Any]] = []
    try:
        for batch, rate in ((64, 10), (64, 30), (16, 100)):
            batch_rows = rows(rng, batch)
            stubs = procfs.children(server_pid)  # the Python-backend stubs
            cpu0, started = procfs.cpu_and_faults(stubs)[0], time.monotonic()
            while time.monotonic() - started < seconds:
                serial += 1
                sent = time.monotonic()
                await pool.pick().submit(codec.encode(batch_rows, SIG, f"paced-{serial}"))
                await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - sent)))
            cpu = (procfs.cpu_and_faults(stubs)[0] - cpu0) / (time.monotonic() - started) * 100
            out.append({"blas": label, "batch": batch, "req_per_s": rate, "stub_cpu_pct": round(cpu, 1)})
            print(out[-1], file=sys.stderr, flush=True)
    finally:
        await pool.close()
    return out


def serve(workdir: Path, repository: Path, blas_threads_default: bool = False) -> EmbeddedTriton:
    triton = EmbeddedTriton(workdir, repository)
    if blas_threads_default and triton.env is not None:
        for name in SINGLE_THREADED_BLAS:  # as a plain tritonserver would start
            triton.env.pop(name, None)
    triton.start()
    try:
        triton.wait_until(triton.ready, 180, "ready")
    except BaseException:
        triton.stop()
        raise
    return triton


def plot(queue_rows: list[dict[str, Any]], blas_rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = sorted({f"b{r['batch']}×{r['in_flight']}" for r in queue_rows})
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        sel = {f"b{r['batch']}×{r['in_flight']}": r["p99"] for r in queue_rows if r["variant"] == variant}
        ax1.bar(
            [x + i * width for x in range(len(labels))], [sel[lab] for lab in labels], width, label=variant
        )
    ax1.set_xticks([x + width for x in range(len(labels))], labels)
    ax1.set(yscale="log", ylabel="p99 ms", title="Triton 2.51: request p99 by queue settings")
    ax1.legend(fontsize=8)
    for label in ("default", "one thread"):
        paced_rows = [r for r in blas_rows if r["blas"] == label]
        ax2.plot(
            [f"{r['batch']}×{r['req_per_s']}/s" for r in paced_rows],
            [r["stub_cpu_pct"] for r in paced_rows],
            marker="o",
            label=label,
        )
    ax2.set(ylabel="stub CPU %", title="Python-backend stub CPU by BLAS threads")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def table(queue_rows: list[dict[str, Any]], blas_rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dynamic_batching | batch | in flight | p50 ms | p99 ms | requests > 100 ms | rows/s "
        "| Triton queue ms | Triton compute ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['batch']} | {r['in_flight']} | {r['p50']} | {r['p99']} | {r['slow']} "
        f"| {r['rows_per_s']} | {r['queue_ms']} | {r['compute_ms']} |"
        for r in queue_rows
    ]
    lines += ["", "| BLAS threads | batch | requests/s | stub CPU % |", "|---|---|---|---|"]
    lines += [f"| {r['blas']} | {r['batch']} | {r['req_per_s']} | {r['stub_cpu_pct']} |" for r in blas_rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per closed-loop case")
    parser.add_argument("--workdir", type=Path, default=Path("var/bench_triton"))
    parser.add_argument("--model-repository", type=Path, default=Path("var/devstack/model_repository"))
    parser.add_argument("--out", type=Path, default=Path("var/bench_triton_queue"))
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    ensure_model(args.model_repository)
    queue_rows: list[dict[str, Any]] = []
    for i, (variant, scheduling) in enumerate(VARIANTS.items()):
        print(f"queue: {variant} ...", file=sys.stderr, flush=True)
        repo = model_copy(args.model_repository.resolve(), workdir / f"repo-{i}", scheduling)
        triton = serve(workdir, repo)
        try:
            queue_rows += asyncio.run(closed_loop(triton.grpc_url, variant, args.requests))
        finally:
            triton.stop()
    blas_rows: list[dict[str, Any]] = []
    for label, default in (("default", True), ("one thread", False)):
        print(f"blas: {label} ...", file=sys.stderr, flush=True)
        repo = model_copy(args.model_repository.resolve(), workdir / "repo-blas", "")
        triton = serve(workdir, repo, blas_threads_default=default)
        try:
            blas_rows += asyncio.run(paced(triton.grpc_url, triton.pid, label))
        finally:
            triton.stop()
    text = table(queue_rows, blas_rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(queue_rows, blas_rows, args.out.with_suffix(".png"))
    print(f"\ntable: {args.out.with_suffix('.md')}  plot: {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
