#!/usr/bin/env python3
"""Before and after a change on the hot path, from `scripts/bench` runs made in an
interleaved order (before, after, after, before: each its own embedded stack; the "before"
runs from a worktree of the older commit). Reads each run's table (`--out` of the bench)
and writes one markdown table of pipeline / hand per run, model and rep, the medians per
side, and a PNG of the ratios.

    python scripts/bench_compare.py --out docs/bench_credit_bytes \\
        before=/tmp/abba/1/out.md after=/tmp/abba/2/out.md after=/tmp/abba/3/out.md \\
        before=/tmp/abba/4/out.md

The ratio against the hand loop measured in the same run is what is compared: absolute
rates move with the shared cores from run to run."""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@dataclass(frozen=True)
class Rep:
    run: str  # e.g. "before1"
    side: str
    model: str
    rep: str
    hand: float
    pipeline: float
    cpu_ratio: float  # CPU per event, pipeline / hand
    rss_mb: float

    @property
    def ratio(self) -> float:
        return self.pipeline / self.hand


def reps_of(run: str, side: str, table: str, variant_name: str = "pipeline") -> list[Rep]:
    """The per-run rows of a bench table: | rep | model | variant | ev/s | drain | CPU | RSS | …
    (``variant_name``: the pipeline variant compared with hand, e.g. pipeline-state)."""
    cells: dict[tuple[str, str, str], list[str]] = {}
    for line in table.splitlines():
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(row) > 6 and row[0].isdigit() and row[2] in ("hand", variant_name):
            cells[(row[0], row[1], row[2])] = row
    reps = []
    for (rep, model, variant), hand in sorted(cells.items()):
        pipeline = cells.get((rep, model, variant_name))
        if variant != "hand" or pipeline is None:
            continue
        reps.append(
            Rep(
                run,
                side,
                model,
                rep,
                _number(hand[3]),
                _number(pipeline[3]),
                _number(pipeline[5]) / _number(hand[5]),
                _number(pipeline[6]),
            )
        )
    return reps


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def markdown(reps: list[Rep]) -> str:
    lines = [
        "| run | model | rep | hand ev/s | pipeline ev/s | pipeline / hand "
        "| CPU per event pipeline / hand | pipeline RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.run} | {r.model} | {r.rep} | {r.hand:,.0f} | {r.pipeline:,.0f} | {r.ratio:.2f} | "
        f"{r.cpu_ratio:.2f} | {r.rss_mb:.0f} |"
        for r in reps
    ]
    sides = list(dict.fromkeys(r.side for r in reps))
    header = " | ".join(f"{s}: pipeline / hand (median, per rep)" for s in sides)
    cpu = " | ".join(f"CPU per event ratio {s}" for s in sides)
    lines += ["", f"| model | {header} | {cpu} |", "|---|" + "---|" * (2 * len(sides))]
    for model in dict.fromkeys(r.model for r in reps):
        ratios, cpus = [], []
        for side in sides:
            mine = [r for r in reps if r.model == model and r.side == side]
            each = ", ".join(f"{r.ratio:.2f}" for r in mine)
            ratios.append(f"{statistics.median(r.ratio for r in mine):.2f} ({each})")
            cpus.append(f"{statistics.median(r.cpu_ratio for r in mine):.2f}")
        lines.append(f"| {model} | {' | '.join(ratios)} | {' | '.join(cpus)} |")
    return "\n".join(lines) + "\n"


def plot(reps: list[Rep], path: Path) -> None:
    models = list(dict.fromkeys(r.model for r in reps))
    sides = list(dict.fromkeys(r.side for r in reps))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for i, side in enumerate(sides):
            ys = [r.ratio for r in reps if r.model == model and r.side == side]
            ax.scatter([i] * len(ys), ys, alpha=0.7)
            ax.hlines(statistics.median(ys), i - 0.25, i + 0.25, colors="black")
        ax.set_xticks(range(len(sides)), sides)
        ax.set_xlim(-0.6, len(sides) - 0.4)
        ax.set_title(model)
        ax.set_ylabel("pipeline / hand loop (same run)")
        ax.axhline(1.0, color="grey", linewidth=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", nargs="+", metavar="SIDE=TABLE", help="a bench table and its side, in run order"
    )
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    parser.add_argument(
        "--variant", default="pipeline", help="the pipeline variant set against hand (e.g. pipeline-state)"
    )
    args = parser.parse_args(argv)
    reps: list[Rep] = []
    counts: dict[str, int] = {}
    for spec in args.runs:
        side, sep, table = spec.partition("=")
        if not sep or not Path(table).is_file():
            print(f"bench_compare: {spec}: expected SIDE=TABLE with a bench table file", file=sys.stderr)
            return 2
        counts[side] = counts.get(side, 0) + 1
        found = reps_of(f"{side}{counts[side]}", side, Path(table).read_text(), args.variant)
        if not found:
            print(f"bench_compare: {table}: no hand and {args.variant} rows in it", file=sys.stderr)
            return 2
        reps += found
    args.out.with_suffix(".md").write_text(markdown(reps))
    plot(reps, args.out.with_suffix(".png"))
    print(f"table: {args.out.with_suffix('.md')}  plot: {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
