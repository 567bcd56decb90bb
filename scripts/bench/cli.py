"""Benchmark: the pipeline's throughput against a naive loop, the best hand-written batched
asyncio loop and Triton alone, on one embedded stack (real broker, real Triton 2.51).

Two models with the same signature are served side by side: the shipped recommender and a
trivial Python-backend model (fixed ids and scores, no math) written next to it, so the
cost of the model and the cost of everything around it can be told apart.

Variants, each a process of its own whose CPU and peak RSS are read from /proc:

- naive: one record at a time: getone, blocking unary infer, produce and await, commit.
- hand: aiokafka getmany, chunks of the pipeline's batch size, tritonclient aio streams
  with the pipeline's streams x in-flight, each output sent and gathered, commits of the
  lowest unfinished offsets every 500 ms; consume, infer and produce overlap.
- pipeline: `pipeline run` on the shipped topology, every guarantee on.
- ceiling: Triton alone, requests built in advance at the pipeline's batch size, the best
  of a few streams x in-flight shapes.
- ceiling-shm (only with --variants): the same with the tensors in system shared memory (a
  region pair per request in flight, registered with Triton; inputs written in, outputs
  copied out), as a client next to Triton could. It measured no gain here, so the pipeline
  sends its tensors in the gRPC messages (docs/benchmarks.md).

Each Kafka run consumes a fresh 4-partition topic pre-loaded (just before it starts: the
shipped deadline dead-letters events older than 30 s) with --events events of distinct
users (user id = index; no coalescing helps), from the start, with a fresh group, into a
fresh output topic. The rate is steady state: the outputs whose produce timestamps lie
between the 10th and 90th percentile, over that span; CPU seconds are counted over the same
span. The default backlog is 100,000 events, 5x the shipped topology's credits
(high_watermark 20,000): with a backlog the size of the credits the pipeline takes it all
in its first ~150 ms and its 10th-90th percentile span holds only the work after the parse
(measured at 20,000 on the trivial model, commit a017e8f: 50,000-66,000 ev/s "steady" for
25,000-36,000 ev/s from the first take to the last output). Reps rotate the order. A last
step runs the pipeline at half its median rate (or --half-rate EV_S) and reports its latency;
`--half-rate-set KEY.PATH=VALUE` (repeatable) adds settings to compare there, each run
interleaved with the shipped one --half-rate-reps times (`--reps 0` runs only this step).

Writes a markdown table and a PNG plot (docs/bench_throughput.* by default; --smoke: in the
workdir), and every run's numbers to WORKDIR/bench_throughput.json (--render JSON writes the
table and plot again from it).

`--set KEY.PATH=VALUE` (repeatable) changes a key of the shipped topology for the run, e.g.
`--set batch.max_size=256`; hand and ceiling follow the batch size, streams, in-flight and
poll settings so the comparison stays like for like. Each run's log line and JSON also give
the CPU of Triton's model processes (the Python backend's stubs) apart from the server's.

    python scripts/bench [--events 100000] [--reps 3] [--smoke] [--workdir DIR]
                         [--models M,..] [--variants [M:]V,..] [--set KEY.PATH=VALUE]
                         [--half-rate EV_S] [--half-rate-reps N]
                         [--half-rate-set KEY.PATH=VALUE]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from pipeline.devstack.topology import SHIPPED
from pipeline.topology.schema import Topology

from .config import DEFAULT_VARIANTS, MODELS, VARIANTS, WORKER_KINDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="pre-loaded events per run")
    parser.add_argument("--naive-events", type=int, default=2_000, help="cap of the naive loop")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--half-rate-seconds", type=float, default=15.0)
    parser.add_argument(
        "--half-rate",
        type=float,
        default=None,
        metavar="EV_S",
        help="the latency step's offered rate (default: half the pipeline's median rate)",
    )
    parser.add_argument("--half-rate-reps", type=int, default=1, help="runs of each latency setting")
    parser.add_argument(
        "--half-rate-set",
        type=topology_override,
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="a setting the latency step also runs, interleaved with the shipped one (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="~2,000 events, 1 rep, output in the workdir")
    parser.add_argument("--workdir", type=Path, default=None, help="default var/bench_throughput")
    parser.add_argument(
        "--out", type=Path, default=None, help="table and plot (default docs/bench_throughput)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="a subset, comma-separated")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)}; MODEL:VARIANT runs that variant on that "
        "model only (e.g. recommender:naive)",
    )
    parser.add_argument(
        "--hand-produce",
        choices=("send", "batch"),
        default="send",
        help="hand's produce: send() per output (default) or whole batches (send_batch)",
    )
    parser.add_argument(
        "--hand-batch-bytes",
        type=int,
        default=1_048_576,
        help="hand's producer max_batch_size (the pipeline sink's; aiokafka's default is 16384)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only write the table and plot again from a run's WORKDIR/bench_throughput.json",
    )
    parser.add_argument(
        "--set",
        type=topology_override,
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a topology key (YAML value), e.g. batch.max_size=256; hand and ceiling follow it",
    )
    parser.add_argument("--_worker", choices=WORKER_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--_spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if not set(args.models) <= set(MODELS):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    # each variant's name once, and the models it runs on (all of --models unless qualified)
    items = [v for v in args.variants.split(",") if v]
    args.variants, args.variant_models = [], {}
    for item in items:
        model, _, variant = item.rpartition(":")
        if variant not in VARIANTS:
            parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
        if model and model not in args.models:
            parser.error(f"--variants {item}: {model!r} is not one of --models {','.join(args.models)}")
        if variant not in args.variants:
            args.variants.append(variant)
        on = args.variant_models.setdefault(variant, [])
        on += [m for m in ([model] if model else args.models) if m not in on]
    # The shipped topology with the overrides (what hand and ceiling follow): a wrong path
    # or value fails here, before any stack starts.
    args.shipped = yaml.safe_load(SHIPPED.read_text())
    for path, value in args.set:
        set_key(args.shipped, path, value)
    if args.set:
        try:
            Topology.model_validate(args.shipped)
        except ValueError as error:
            parser.error(f"--set: the topology is no longer valid: {error}")
    if args.reps == 0 and not args.half_rate:
        parser.error("--reps 0 runs only the latency step, which then needs --half-rate EV_S")
    for path, value in args.half_rate_set:
        alternative = yaml.safe_load(yaml.safe_dump(args.shipped))
        set_key(alternative, path, value)
        try:
            Topology.model_validate(alternative)
        except ValueError as error:
            parser.error(f"--half-rate-set {path}: the topology is no longer valid: {error}")
    if args.smoke:
        args.events, args.naive_events, args.reps, args.half_rate_seconds = 2_000, 200, 1, 3.0
    return args


def set_key(data: dict[str, Any], path: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for the path ``a.b`` (the section must exist)."""
    *parents, key = path.split(".")
    for name in parents:
        if not isinstance(data.get(name), dict):
            raise SystemExit(f"--set {path}: the topology has no section {name!r}")
        data = data[name]
    data[key] = value


# What the bench sets per run (fresh topics and group, the model under test, the stack's
# addresses): an override of these would break the runs' isolation or the comparison.
RESERVED_KEYS = frozenset(
    {"broker", "source", "source.topics", "source.group_id", "sink", "sink.topic"}
    | {"sink.dead_letter_topic", "model", "model.name", "model.url"}
)


def topology_override(text: str) -> tuple[str, Any]:
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY.PATH=VALUE")
    if path in RESERVED_KEYS or path.startswith("broker."):
        raise argparse.ArgumentTypeError(f"{path}: set by the benchmark for every run")
    return path, yaml.safe_load(value)
