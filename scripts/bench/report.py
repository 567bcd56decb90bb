"""The markdown page of a run's results (docs/bench_throughput.md), with the machine and
code it ran on, and the writing of the page and the plot."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import CEILING_VARIANTS, MODELS, ROOT
from .plot import plot
from .stats import STAGES, aggregate, median


def code_fingerprint() -> str:
    """A hash of pipeline/'s sources: tells whether the code measured changed during a run."""
    digest = hashlib.sha1()
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "pipeline"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": cpu,
        "python": platform.python_version(),
        "commit": commit + (" (pipeline/ with uncommitted changes)" if dirty else ""),
    }


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def overrides_note(overrides: list[str]) -> str:
    if not overrides:
        return "."
    return f"; topology overrides (`--set`, hand and ceiling follow them): {', '.join(overrides)}."


def report(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    half: list[dict[str, Any]] | dict[str, Any] | None,
    facts: dict[str, str],
) -> str:
    """The markdown page; ``meta``: the command line and the settings of the run."""
    agg = aggregate(rows)
    args = argparse.Namespace(**meta)
    command, batch = meta["command"], meta["batch"]
    lines = [
        "# Throughput: pipeline vs hand-written loop vs Triton alone",
        "",
        f"`{command}`",
        "",
        f"- {facts['date']}; {facts['nproc']} cores (`nproc`), {facts['cpu']}; Python {facts['python']}; "
        f"commit {facts['commit']}. The broker (Tansu) and Triton 2.51 run on the same cores.",
        f"- {args.events:,} pre-loaded events per run (distinct users, 4 partitions; naive: "
        f"{min(args.naive_events, args.events):,}), {args.reps} rep(s), order rotated per rep; "
        "medians, rate spread min–max. Each variant is a process of its own on one stack, "
        f"both models served side by side. Batch {batch} users, 2 streams, 8 requests in "
        "flight (the shipped topology's) for hand and pipeline" + overrides_note(meta.get("overrides", [])),
        "- **naive**: getone → blocking unary infer → produce and await → commit, per record. "
        "**hand**: getmany → chunks of the batch size → tritonclient aio stream_infer → "
        + ("send each output, gather" if args.hand_produce == "send" else "send_batch per partition, gather")
        + f" (producer batches up to {args.hand_batch_bytes:,} bytes)"
        + " → commit the lowest unfinished offsets every 500 ms; consume, "
        "infer and produce overlap (no validation, windows, lanes, retries or dead letters). "
        "**pipeline**: `pipeline run` on topologies/recommendations.yaml (every guarantee on; "
        "the embedded broker's fetch wait). **ceiling**: Triton alone, requests built in "
        "advance, best streams×in-flight shape.",
        "- ev/s: steady state (outputs between the 10th and 90th percentile of their produce "
        "timestamps). CPU s per 1,000 events over the same span: the consuming process, Triton "
        "(server and backend stubs), the broker. Peak RSS: VmHWM of the consuming process. "
        "The backlog is 5x the pipeline's credits (20,000): with a backlog of one credit "
        "window the pipeline takes it all at once and that span misses its parse work.",
        "- e2e: input produce → output produce. The inputs are pre-loaded, so this is the "
        "backlog's drain time (start-up included), not a service latency; in-process: taken "
        "from Kafka (pipeline: its window opening) → output produce. Ceiling: per request. "
        "Latency under load: the half-rate table.",
        "",
        "| model | variant | ev/s | min–max | CPU s/1k ev (process) | Triton CPU s/1k | "
        "broker CPU s/1k | peak RSS MB | e2e p50 / p99 ms | in-process p50 / p99 ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not rows:  # only the latency step ran (--reps 0): the page is its table
        halves = [half] if isinstance(half, dict) else (half or [])
        return "\n".join(lines[:-2] + half_rate_table(halves)[1:] + [""])
    for (model, variant), a in agg.items():
        note = ""
        if variant in CEILING_VARIANTS:
            note = f"batch {batch}, best shape {'/'.join(sorted(set(a['shapes'])))}"
        elif variant == "naive":
            note = f"{a['events']:,.0f} events per run"
        if a["dead_letters"]:
            note += f" {a['dead_letters']:.0f} dead letters"
        lines.append(
            f"| {model} | {variant} | {fmt(a['rate'])} | {fmt(a['rate_min'])}–{fmt(a['rate_max'])} | "
            f"{fmt(a['cpu_consumer'], 3)} | {fmt(a['cpu_triton'], 3)} | "
            f"{fmt(a['cpu_broker'], 3) if variant not in CEILING_VARIANTS else '–'} | {fmt(a['rss_mb'])} | "
            f"{fmt(a['e2e_p50'])} / {fmt(a['e2e_p99'])} | "
            f"{fmt(a['proc_p50'], 1)} / {fmt(a['proc_p99'], 1)} | "
            f"{note} |"
        )
    lines += ratio_table(agg)
    halves = [half] if isinstance(half, dict) else (half or [])
    if halves:
        lines += half_rate_table(halves)
    lines += runs_table(rows)
    lines += ["", "![throughput](bench_throughput.png)", ""]
    return "\n".join(lines)


def ratio_table(agg: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Per model, the pipeline's rate (and CPU per event) over the others'."""
    lines: list[str] = []
    lines += [
        "",
        "| model | pipeline / hand | pipeline / ceiling | pipeline / naive "
        "| CPU per event: pipeline / hand | 2 workers / hand | durable state / in memory "
        "| string ids / integers (CPU per event) |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for model in MODELS:
        pipe, hand = agg.get((model, "pipeline")), agg.get((model, "hand"))
        ceiling, naive = agg.get((model, "ceiling")), agg.get((model, "naive"))
        two, durable = agg.get((model, "pipeline-2w")), agg.get((model, "pipeline-state"))
        strings = agg.get((model, "pipeline-strings"))
        if pipe is None:
            continue

        def ratio(other: dict[str, Any] | None, key: str = "rate", p: dict[str, Any] = pipe) -> str:
            return f"{p[key] / other[key]:.2f}" if other and other[key] else "–"

        string_ratio = (
            f"{ratio(pipe, p=strings)} ({ratio(pipe, 'cpu_consumer', strings)})" if strings else "–"
        )
        lines.append(
            f"| {model} | {ratio(hand)} | {ratio(ceiling)} | {ratio(naive)} | {ratio(hand, 'cpu_consumer')} "
            f"| {ratio(hand, p=two) if two else '–'} | {ratio(pipe, p=durable) if durable else '–'} "
            f"| {string_ratio} |"
        )
    return lines


def runs_table(rows: list[dict[str, Any]]) -> list[str]:
    """A row per run, with what Triton's statistics say of it."""
    lines: list[str] = []
    lines += [
        "",
        "Every run (drain: all its events over first take → last output, a check on the steady "
        "rate; Triton: from its statistics, the run's rows per request, requests per execution "
        "and execution time per row, queue excluded):",
        "",
        "| rep | model | variant | ev/s | drain ev/s | CPU s/1k | RSS MB | e2e p99 ms "
        "| Triton rows/req · req/exec · us/row | ceiling shapes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        triton = (
            f"{r['rows_per_request']:.0f} · {r['requests_per_execution']:.2f} · "
            f"{r['triton_infer_us_per_row']:.1f}"
            if "rows_per_request" in r
            else "–"
        )
        lines.append(
            f"| {r['rep']} | {r['model']} | {r['variant']} | {fmt(r['rate'])} | "
            f"{fmt(r.get('span_rate'))} | {fmt(r['cpu_consumer'], 3)} | "
            f"{fmt(r['rss_mb'])} | {fmt(r['e2e_p99'])} | {triton} | "
            f"{', '.join(f'{k}: {v:,}' for k, v in r.get('shapes', {}).items())} |"
        )
    return lines


def setting_name(setting: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{path}={value}" for path, value in setting) or "shipped"


def half_rate_table(halves: list[dict[str, Any]]) -> list[str]:
    """A row per setting: the medians over its runs, and each run's p99 (the spread)."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for h in halves:
        by_setting.setdefault(h.get("setting", "shipped"), []).append(h)
    first = halves[0]
    lines = [
        "",
        f"Pipeline at {first.get('rate_from', 'half its median rate')} (shipped model, "
        f"{first['seconds']:.0f} s a run, load "
        "generator in the bench process, producer linger 5 ms; with several settings the runs "
        "are interleaved and each cell is the median of its runs):",
        "",
        "| setting | runs | offered ev/s | delivered ev/s | e2e p50 / p99 ms | e2e p99 per run ms "
        "| in-process p50 / p99 ms | CPU s/1k ev | Triton CPU s/1k | broker CPU s/1k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_setting.items():

        def m(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return median([r[key] for r in runs])

        lines.append(
            f"| {name} | {len(runs)} | {fmt(m('offered'))} | {fmt(m('rate'))} | "
            f"{fmt(m('e2e_p50'), 1)} / {fmt(m('e2e_p99'), 1)} | "
            f"{', '.join(fmt(r['e2e_p99']) for r in runs)} | "
            f"{fmt(m('proc_p50'), 1)} / {fmt(m('proc_p99'), 1)} | "
            f"{fmt(m('cpu_consumer'), 3)} | {fmt(m('cpu_triton'), 3)} | {fmt(m('cpu_broker'), 3)} |"
        )
    staged = {name: [r["stages"] for r in runs if "stages" in r] for name, runs in by_setting.items()}
    if any(staged.values()):
        lines += [
            "",
            "Where the time goes, p50 / p99 ms per stage (medians over the runs; percentiles of "
            "stages do not add up): input produce → its window's close (producer linger, broker, "
            "fetch, parse, the wait in the window), waiting for an inference slot, inference, "
            "enrich and produce.",
            "",
            "| setting | " + " | ".join(STAGES) + " |",
            "|---|" + "---|" * len(STAGES),
        ]
        for name, runs_stages in staged.items():
            if not runs_stages:
                continue
            cells = [
                f"{fmt(median([r[stage][0] for r in runs_stages]), 1)} / "
                f"{fmt(median([r[stage][1] for r in runs_stages]), 1)}"
                for stage in STAGES
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """The table (OUT.md) and the plot (OUT.png) of a run's results."""
    text = report(results["meta"], results["rows"], results["half"], results["facts"])
    text = text.replace("(bench_throughput.png)", f"({out.with_suffix('.png').name})")  # --out's own
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    if not results["rows"]:  # only the latency step ran (--reps 0): nothing to plot
        print(f"\ntable: {out.with_suffix('.md')}", file=sys.stderr)
        return
    plot(results["rows"], out.with_suffix(".png"))
    print(f"\ntable: {out.with_suffix('.md')}  plot: {out.with_suffix('.png')}", file=sys.stderr)
