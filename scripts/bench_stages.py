"""The pipeline's own per-event cost, stage by stage, in one process (no broker, no Triton).

Each stage's function runs on a batch like the throughput benchmark's (distinct users, one
event each, the shipped history length and top k) and is timed per row; beside some
stages, the way they were done before (a key or a record at a time), for comparison.
Medians of 7 timings of N batches each; the spread is the lowest and highest of the 7.

    python scripts/bench_stages.py [--rows 128] [--out docs/bench_stages]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord
from tritonclient.grpc import service_pb2

from pipeline.events import BatchOutcome, InferenceBatch, RawRecord, Window
from pipeline.operators.coalesce import RecentItems, coalesce_window
from pipeline.operators.enrich import OutputSpec, outcome_batch
from pipeline.operators.parse import parse_batch
from pipeline.sinks.partitioner import partitions_for
from pipeline.sources.offsets import OffsetTracker
from pipeline.sources.partitions import offsets_by_assignment
from pipeline.sources.undecodable import raw
from pipeline.testing.builders import parse_rules
from pipeline.triton.codec import ModelSignature, decode, encode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.report import machine  # the throughput benchmark's, beside this script

ROOT = Path(__file__).resolve().parent.parent
HISTORY, TOP_K, PARTITIONS = 16, 10, [0, 1, 2, 3]


def consumed(rows: int, now: int) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for i in range(rows):
        user = 100_000 + i
        doc = {"event_id": f"p-{i}", "user_id": user, "item_id": 1 + i % 500, "type": "view", "ts": now}
        value, key = orjson.dumps(doc), str(user).encode()
        size = (len(key), len(value))
        out.append(ConsumerRecord("interactions", i % 4, 1_000 + i, now, 0, key, value, None, *size, ()))
    return out


def response(rows: int) -> service_pb2.ModelInferResponse:
    rng = np.random.default_rng(1)
    answer = service_pb2.ModelInferResponse()
    for name, datatype, array in (
        ("ITEM_IDS", "INT64", rng.integers(0, 50_000, (rows, TOP_K), dtype=np.int64)),
        ("SCORES", "FP32", rng.random((rows, TOP_K), dtype=np.float32)),
    ):
        out = answer.outputs.add()
        out.name, out.datatype = name, datatype
        out.shape.extend([rows, TOP_K])
        answer.raw_output_contents.append(array.tobytes())
    return answer


def finish_each(tracker: OffsetTracker, sources: list[RawRecord]) -> None:
    for src in sources:
        tracker.finish(src.topic, src.partition, src.offset)


def finish_batch(tracker: OffsetTracker, sources: list[RawRecord]) -> None:
    for (topic, partition, _), offsets in offsets_by_assignment(sources).items():
        tracker.finish_many(topic, partition, offsets)


def stages(rows: int) -> list[tuple[str, str, Callable[[], object]]]:
    """(stage, how, the call on one batch)."""
    now = int(time.time() * 1000)
    fetched = consumed(rows, now)
    records = [raw(m) for m in fetched]
    rules = parse_rules()
    events = parse_batch(records, rules, now).events
    window = Window(tuple(events), now, now + 20)
    requests = coalesce_window(window, RecentItems(HISTORY, 200_000))
    sig = ModelSignature("recommender", "1", HISTORY, TOP_K)
    answer = response(rows)
    answers = list(zip(requests, decode(answer, rows, TOP_K), strict=True))
    outcome = BatchOutcome(InferenceBatch(tuple(requests), now, now + 20), answers, [], "recommender", "1")
    spec = OutputSpec("recommendations", "dead-letters")
    keys = [str(r.user_id).encode() for r in requests]
    partitioner = DefaultPartitioner()
    every = PARTITIONS

    def tracked() -> OffsetTracker:
        tracker = OffsetTracker()
        for p in PARTITIONS:
            tracker.track("interactions", p, (r.offset for r in records if r.partition == p))
        return tracker

    return [
        ("source: client record → RawRecord", "", lambda: [raw(m, 1) for m in fetched]),
        ("parse and validate", "", lambda: parse_batch(records, rules, now)),
        ("coalesce by user", "", lambda: coalesce_window(window, RecentItems(HISTORY, 200_000))),
        ("encode the request", "", lambda: encode(requests, sig, "bench")),
        ("decode the answer", "", lambda: decode(answer, rows, TOP_K)),
        ("enrich: output records", "", lambda: outcome_batch(outcome, spec)),
        ("sink: partition of each key", "numpy, the batch at once",
            lambda: partitions_for(keys, every, every)),
        ("sink: partition of each key", "aiokafka, a key at a time (before)",
            lambda: [partitioner(k, every, every) for k in keys]),
        ("finish: offsets", "a partition at a time", lambda: finish_batch(tracked(), records)),
        ("finish: offsets", "a record at a time (before)", lambda: finish_each(tracked(), records)),
        ("  (tracking, in both finish rows)", "", tracked),
    ]  # fmt: skip


def timed(call: Callable[[], object], rows: int, batches: int) -> tuple[float, float, float]:
    """Median, lowest and highest of 7 timings, microseconds per row."""
    call()
    per_row = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(batches):
            call()
        per_row.append((time.perf_counter() - start) / batches / rows * 1e6)
    return statistics.median(per_row), min(per_row), max(per_row)


def plot(results: list[tuple[str, str, tuple[float, float, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{stage}\n{how}" if how else stage for stage, how, _ in results]
    medians = [m for _, _, (m, _, _) in results]
    err = [[m - lo for _, _, (m, lo, _) in results], [hi - m for _, _, (m, _, hi) in results]]
    colours = ["tab:gray" if "before" in how else "tab:blue" for _, how, _ in results]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(results) + 1.2))
    ax.barh(range(len(results)), medians, xerr=err, color=colours, capsize=3)
    ax.set_yticks(range(len(results)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("µs per row (median of 7; bars: lowest–highest)")
    ax.set_title("The pipeline's own per-event cost by stage (grey: how it was done before)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="rows per batch (the shipped batch size)")
    parser.add_argument("--batches", type=int, default=300, help="batches per timing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_stages")
    args = parser.parse_args(argv)
    results = [(stage, how, timed(call, args.rows, args.batches)) for stage, how, call in stages(args.rows)]
    info = machine()
    lines = [
        "# The pipeline's own per-event cost, stage by stage",
        "",
        "`python scripts/bench_stages.py`",
        "",
        f"- {info['date']}; {info['nproc']} cores, {info['cpu']}; Python {info['python']}; "
        f"commit {info['commit']}.",
        f"- One process, no broker or Triton: each stage's function on a {args.rows}-row batch "
        f"(distinct users, one event each, history {HISTORY}, top {TOP_K}), {args.batches} batches "
        "per timing; median of 7 timings, lowest–highest. The finish rows include tracking the "
        "offsets first (its own row).",
        "",
        "| stage | how | µs per row | lowest–highest |",
        "|---|---|---|---|",
    ]
    for stage, how, (median, low, high) in results:
        lines.append(f"| {stage} | {how} | {median:.2f} | {low:.2f}–{high:.2f} |")
    lines += ["", f"![stages]({args.out.name}.png)", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text("\n".join(lines))
    plot(results, Path(f"{args.out}.png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
