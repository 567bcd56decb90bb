"""The benchmark's run: the stack, the reps of every model and variant in rotated order, the
latency step at half the pipeline's rate, then the JSON, the table and the plot."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.devstack.stack import EmbeddedStack, ensure_model

from .cli import parse_args
from .config import MODELS, ROOT, VARIANTS
from .model import write_string_catalogues, write_trivial
from .report import code_fingerprint, machine, setting_name, write_outputs
from .runs import Bench
from .stats import median
from .workers import worker_main


def main() -> int:
    command = " ".join(["python scripts/bench", *sys.argv[1:]])
    args = parse_args()
    if args._worker:
        return worker_main(args._worker, json.loads(args._spec))
    if args.render is not None:  # a previous run's results, rendered again
        write_outputs(
            (args.out or ROOT / "docs" / "bench_throughput").resolve(), json.loads(args.render.read_text())
        )
        return 0
    if args.workdir is None:
        args.workdir = (
            Path(tempfile.mkdtemp(prefix="bench-throughput-"))
            if args.smoke
            else ROOT / "var" / "bench_throughput"
        )
    workdir = args.workdir.resolve()
    out = (
        args.out or (workdir / "bench_throughput" if args.smoke else ROOT / "docs" / "bench_throughput")
    ).resolve()
    repository = workdir / "model_repository"
    ensure_model(repository)
    write_trivial(repository)
    write_string_catalogues(repository)
    facts = machine()
    fingerprint = code_fingerprint()
    stack = EmbeddedStack.start(workdir, repository)
    rows: list[dict[str, Any]] = []
    halves: list[dict[str, Any]] = []
    try:
        bench = Bench(args, stack, workdir)
        run_reps(bench, args, rows)
        run_half_rate(bench, args, rows, halves)
    except BaseException:
        # a failed or interrupted run: the runs before it are kept for a closer look
        partial = workdir / "bench_throughput.partial.json"
        partial.write_text(json.dumps({"rows": rows, "half": halves}, indent=1))
        print(f"stopped early: the runs so far are in {partial}", file=sys.stderr)
        raise
    finally:
        stack.stop()
    if code_fingerprint() != fingerprint:
        facts["commit"] += " — **pipeline/ changed during this run: its rows mix code versions**"
        print("warning: pipeline/ changed during the run", file=sys.stderr)
    meta = {
        "command": command,
        "batch": bench.batch,
        **{
            k: getattr(args, k)
            for k in ("events", "naive_events", "reps", "hand_produce", "hand_batch_bytes")
        },
        "overrides": [f"{path}={value}" for path, value in args.set],
    }
    results = {"meta": meta, "rows": rows, "half": halves, "facts": facts}
    (workdir / "bench_throughput.json").write_text(json.dumps(results, indent=1))
    write_outputs(out, results)
    return 0


def run_reps(bench: Bench, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Every model and variant once a rep, the order rotated per rep; rows appended as they
    finish (a failure keeps those before it)."""
    for rep in range(args.reps):
        variants = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
        models = MODELS if rep % 2 == 0 else MODELS[::-1]
        for model in (m for m in models if m in args.models):
            for variant in (v for v in variants if model in args.variant_models.get(v, ())):
                log(f"rep {rep + 1}/{args.reps}: {model} {variant} ...")
                row = bench.run(model, variant)
                row["rep"] = rep + 1
                rows.append(row)
                log(
                    f"  {row['rate']:,.0f} ev/s, {row['cpu_consumer']:.3f} CPU s/1k, "
                    f"RSS {row['rss_mb']:.0f} MB, Triton rows/request {row['rows_per_request']:.1f}, "
                    f"requests/execution {row['requests_per_execution']:.2f}, "
                    f"Triton queue {row['triton_queue_ms']:.1f} ms/request, "
                    f"compute {row['triton_infer_us_per_row']:.1f} us/row, "
                    f"Triton {row['cpu_triton']:.3f} CPU s/1k "
                    f"(model processes {row['cpu_triton_stub']:.3f}); minor page faults per 1k: "
                    f"process {row['faults_consumer']:,.0f}, "
                    f"model processes {row['faults_triton_stub']:,.0f}"
                )


def run_half_rate(
    bench: Bench, args: argparse.Namespace, rows: list[dict[str, Any]], halves: list[dict[str, Any]]
) -> None:
    """The latency step: the pipeline at half its median rate (or --half-rate), the shipped
    settings and each --half-rate-set interleaved, --half-rate-reps times."""
    rates = [r["rate"] for r in rows if r["variant"] == "pipeline" and r["model"] == "recommender"]
    rate = args.half_rate or (median(rates) / 2 if rates else 0.0)
    if rate <= 0 or args.half_rate_seconds <= 0:
        return
    settings = [(), *(((path, value),) for path, value in args.half_rate_set)]
    for rep in range(args.half_rate_reps):
        for setting in settings[rep % len(settings) :] + settings[: rep % len(settings)]:
            log(f"half rate {rep + 1}/{args.half_rate_reps}: {rate:,.0f} ev/s, {setting_name(setting)} ...")
            row = bench.half_rate(rate, args.half_rate_seconds, setting)
            row["rep"] = rep + 1
            row["rate_from"] = "a set rate (--half-rate)" if args.half_rate else "half its median rate"
            halves.append(row)
            log(
                f"  e2e p50 {row['e2e_p50']:.0f} / p99 {row['e2e_p99']:.0f} ms, "
                f"delivered {row['rate']:,.0f} ev/s"
            )


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
