"""`pipeline train`: read interactions (an event file, a Kafka topic or the synthetic
generator), choose a model on a held-out split (or write the popularity baseline or a random
version, --kind), write the next version of a Triton model repository with the versions to
keep loaded, and print a JSON summary as the last line (docs/training.md)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka.errors import KafkaError

from pipeline.arguments import at_least, non_negative_float, non_negative_int, positive_int
from pipeline.errors import TopologyError
from pipeline.recsys import data
from pipeline.recsys.repository import model_versions, next_version, unknown_versions
from pipeline.recsys.selection import TrainConfig
from pipeline.recsys.train import KINDS, train_log
from pipeline.replay.files import UnreadableFile

log = logging.getLogger("pipeline.train")
EXIT_UNUSABLE = 2  # a bad --mapping, a missing or broken file, a broker or output that failed
SYNTHETIC_EVENTS = 100_000  # without --file, --topic or --synthetic


class BadVersions(ValueError):
    """Versions to keep loaded that cannot be: the message names the option and the version."""


def version_list(text: str) -> list[int]:
    """``1,2``: version numbers (at least 1 each), for --keep-versions."""
    try:
        versions = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of versions: {text!r}") from None
    if any(v < 1 for v in versions):
        raise argparse.ArgumentTypeError(f"versions are at least 1, got {text!r}")
    return versions


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--file", "--events", dest="file", type=Path, help="event file: JSON lines or CSV, gzip or not"
    )
    source.add_argument("--topic", help="Kafka topic of events, read from its start to its end")
    source.add_argument(
        "--synthetic",
        type=positive_int,
        metavar="N",
        help=f"N events of the synthetic generator (the default: {SYNTHETIC_EVENTS}, said at start)",
    )
    p.add_argument("--mapping", type=Path, help="column mapping (YAML) of the file, as for replay")
    p.add_argument("--format", choices=["jsonl", "csv"], help="the file's format (default: from its name)")
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers of --topic")
    p.add_argument("--out", type=Path, required=True, help="model repository directory")
    p.add_argument("--name", default="recommender", help="model name in the repository")
    p.add_argument("--top-k", type=positive_int, default=10, help="items per recommendation (and the hit@K)")
    p.add_argument("--history-length", type=positive_int, default=16, help="HISTORY items per request")
    p.add_argument(
        "--priority-levels",
        type=non_negative_int,
        default=0,
        help="Triton queue priority levels for the lanes' triton_priority (0: plain queue; "
        "Triton 2.51 stalls ~500 ms with any queue policy, see scripts/bench_triton_queue.py)",
    )
    p.add_argument(
        "--time-budget",
        type=non_negative_float,
        default=TrainConfig.time_budget_s,
        help="seconds after which the selection starts no new candidate",
    )
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="best",
        help="the version written: the best candidate (default), the most-popular baseline, or a "
        "deliberately bad random model (to try a guarded rollout on)",
    )
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep-versions",
        type=version_list,
        metavar="1,2",
        help="versions Triton keeps loaded besides the one written (each in the repository); "
        "default: every version in the repository",
    )
    keep.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="keep loaded the versions this topology's experiment arms (or model.version) name",
    )
    p.add_argument(
        "--min-user-items",
        type=at_least(2),  # one validation and one test item; fewer was read as 2
        default=TrainConfig.min_user_items,
        help="distinct items a user needs to give validation and test events",
    )


def add_train_command(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`train` on the `pipeline` command's subparsers (``common``: --log-format/--log-level)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "train",
        help="train the recommender on events and write the next model version",
        description=__doc__,
        parents=[common],
    )
    add_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def file_options_alone(args: argparse.Namespace) -> str | None:
    """The problem of --mapping or --format given without --file (they would be ignored)."""
    for option, value in (("--mapping", args.mapping), ("--format", args.format)):
        if value is not None and not args.file:
            return f"{option} goes with --file (it describes an event file; none is given)"
    return None


def where_events_come_from(args: argparse.Namespace) -> str:
    """One line, said before any reading: without a source the model is trained on made-up
    events, which a newcomer must not mistake for their own."""
    if args.file:
        mapping = f", columns mapped by {args.mapping}" if args.mapping else ""
        return f"train: events from the file {args.file}{mapping}"
    if args.topic:
        return f"train: events from the topic {args.topic} at {args.bootstrap}, its start to its end"
    if args.synthetic is not None:
        return f"train: events from the synthetic generator: {args.synthetic} events (--synthetic)"
    return f"train: events from the synthetic generator: {SYNTHETIC_EVENTS} events, no --file/--topic given"


def read_interactions(args: argparse.Namespace) -> tuple[data.InteractionLog, np.ndarray | None, str]:
    """The interactions of the chosen source, the catalogue to keep whole, the source's name."""
    if args.file:
        return data.from_file(args.file, args.mapping, args.format), None, str(args.file)
    if args.topic:
        return data.from_topic(args.topic, args.bootstrap), None, f"topic {args.topic}"
    count = args.synthetic if args.synthetic is not None else SYNTHETIC_EVENTS
    interactions, n_items = data.from_synthetic(count)
    return interactions, np.arange(n_items, dtype=np.int64), f"synthetic {count}"


def versions_named(args: argparse.Namespace) -> tuple[list[int] | None, str]:
    """The versions to keep loaded besides the one written and where they came from; None:
    every version in the repository. Checked before any training: each version must be in
    the repository or the one this run writes."""
    if args.keep_versions is not None:
        keep, where = list(args.keep_versions), "--keep-versions"
    elif args.topology is not None:
        keep, where = topology_versions(args.topology, args.name), f"--topology {args.topology}"
    else:
        return None, "every version in the repository"
    model_dir = args.out / args.name
    missing = unknown_versions(model_dir, keep)
    if missing:
        has = ", ".join(map(str, model_versions(model_dir))) or "none"
        raise BadVersions(
            f"{where}: no version {', '.join(map(str, missing))} of {args.name!r} in {args.out} "
            f"(it has {has}; this run writes {next_version(model_dir)})"
        )
    return keep, where


def topology_versions(path: Path, model_name: str) -> list[int]:
    """The versions a topology serves: its experiment's arms' (a topology without one: its
    model.version, if any; none means the latest, the one written)."""
    from pipeline.topology.loader import load_topology

    topology = load_topology(path)
    if topology.model.name != model_name:
        raise BadVersions(f"--topology {path}: it serves model {topology.model.name!r}, not {model_name!r}")
    experiment = getattr(topology, "experiment", None)  # a schema without experiments: none
    named = [(f"experiment arm {arm.id!r}", arm.version) for arm in experiment.arms] if experiment else []
    if topology.model.version:
        named.append(("model.version", topology.model.version))
    versions = []
    for what, version in named:
        if not re.fullmatch(r"[0-9]+", version) or int(version) < 1:
            raise BadVersions(f"--topology {path}: {what} version {version!r} is not a version number")
        versions.append(int(version))
    return versions


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline import logs

    logs.setup(getattr(args, "log_level", None) or "INFO", getattr(args, "log_format", "text"))
    started = time.monotonic()
    if (alone := file_options_alone(args)) is not None:
        print(f"train: {alone}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        keep, kept_by = versions_named(args)
    except (TopologyError, BadVersions) as err:  # nothing read, nothing written
        print(f"train: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(where_events_come_from(args), file=sys.stderr, flush=True)
    try:
        interactions, catalogue, source = read_interactions(args)
        read_s = time.monotonic() - started
        log.info("read %d interactions from %s in %.1f s", len(interactions), source, read_s)
        config = TrainConfig(time_budget_s=args.time_budget, min_user_items=args.min_user_items)
        report = train_log(
            interactions,
            args.out,
            catalogue,
            config,
            top_k=args.top_k,
            history_length=args.history_length,
            model_name=args.name,
            priority_levels=args.priority_levels,
            kind=args.kind,
            keep_versions=keep,
        )
    except TopologyError as err:  # the --mapping file: names the file, the key and the reason
        print(f"train: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    except (UnreadableFile, KafkaError, TimeoutError, OSError) as err:  # the input or the output failed us
        print(f"train: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    summary = {"source": source, **report.summary}
    if report.version is not None:
        summary["loaded_versions_from"] = kept_by
    summary.setdefault("timing_s", {})["read"] = round(read_s, 2)
    print(orjson.dumps(summary).decode())
    return 0 if report.version is not None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train", description=__doc__)
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    add_arguments(parser)
    return cmd_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
