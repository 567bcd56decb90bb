"""`pipeline train`: read interactions (an event file, a Kafka topic or the synthetic
generator), choose a model on a held-out split, write the next version of a Triton model
repository and print a JSON summary as the last line (docs/training.md)."""

from __future__ import annotations

import argparse
import logging
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
from pipeline.recsys.selection import TrainConfig
from pipeline.recsys.train import train_log
from pipeline.replay.files import UnreadableFile

log = logging.getLogger("pipeline.train")
EXIT_UNUSABLE = 2  # a bad --mapping, a missing or broken file, a broker or output that failed


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
        help="N events of the synthetic generator (the default: 100000)",
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


def read_interactions(args: argparse.Namespace) -> tuple[data.InteractionLog, np.ndarray | None, str]:
    """The interactions of the chosen source, the catalogue to keep whole, the source's name."""
    if args.mapping and not args.file:
        raise SystemExit("--mapping goes with --file")
    if args.file:
        return data.from_file(args.file, args.mapping, args.format), None, str(args.file)
    if args.topic:
        return data.from_topic(args.topic, args.bootstrap), None, f"topic {args.topic}"
    count = args.synthetic if args.synthetic is not None else 100_000
    interactions, n_items = data.from_synthetic(count)
    return interactions, np.arange(n_items, dtype=np.int64), f"synthetic {count}"


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline import logs

    logs.setup(getattr(args, "log_level", None) or "INFO", getattr(args, "log_format", "text"))
    started = time.monotonic()
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
        )
    except TopologyError as err:  # the --mapping file: names the file, the key and the reason
        print(f"train: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    except (UnreadableFile, KafkaError, TimeoutError, OSError) as err:  # the input or the output failed us
        print(f"train: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    summary = {"source": source, **report.summary}
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
