"""`pipeline` command: run, validate, topics, resources, dev, audit, experiment, tail, redrive,
replay, train, schema, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Coroutine
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipeline import logs
from pipeline.arguments import non_negative_float, non_negative_int, positive_float, positive_int
from pipeline.devstack.watch import (
    DEV_METRICS_PORT,
    MetricsPortTaken,
    dev_metrics_port,
    load_dev_topology,
    metrics_listener,
)
from pipeline.errors import Fatal, TopologyError
from pipeline.recsys.cli import add_train_command
from pipeline.redrive import reason_argument
from pipeline.replay.cli import add_replay_command
from pipeline.serve import serve
from pipeline.tail import add_tail_command
from pipeline.topology.loader import all_problems, load_topology, read_topology_text

if TYPE_CHECKING:
    from pipeline.audit import TimeRange

# The shipped topologies travel inside the package (pipeline/topologies links ../topologies
# in a checkout), so `pipeline dev` runs from a plain `pip install` too.
DEFAULT_TOPOLOGY = Path(__file__).resolve().parent / "topologies" / "recommendations.yaml"
DEFAULT_DEV_WORKDIR = Path("var/devstack")
log = logging.getLogger("pipeline")


def _setup_logging(args: argparse.Namespace, default_level: str = "INFO") -> None:
    logs.setup(args.log_level or default_level, args.log_format)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for file in args.files:
        try:
            text = read_topology_text(file)
        except TopologyError as err:
            print(str(err), file=sys.stderr)
            status = 2
            continue
        problems = all_problems(text, file)
        for problem in problems:
            print(str(problem), file=sys.stderr)
        if problems:
            status = 2
        else:
            print(f"{file}: valid")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    topology = load_topology(args.topology)
    _setup_logging(args, topology.operations.log_level)
    if args.workers > 1:
        from pipeline.workers import supervise, worker_command

        command = worker_command(args.topology, args.log_format, args.log_level)
        return supervise(topology, command, args.workers)
    return serve(args.topology)


def reaction_share(text: str) -> float:
    """--react-share: a chance in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"at most 1, got {text}")
    return value


def port_number(text: str) -> int:
    """--metrics-port: 0 to 65535."""
    value = non_negative_int(text)
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"at most 65535, got {value}")
    return value


def cmd_dev(args: argparse.Namespace) -> int:
    from pipeline.devstack.dev import DevOptions
    from pipeline.devstack.dev import main as run_dev_stack
    from pipeline.devstack.reactions import DEFAULT_SHARE

    _setup_logging(args)
    if args.react_share is not None and not (args.reacting or args.experiment):
        print("pipeline dev: --react-share goes with --reacting or --experiment", file=sys.stderr)
        return 2
    # Fail fast on a bad file, before starting anything; the addresses dev replaces need none.
    placeholders = {"PIPELINE_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "PIPELINE_TRITON_URL": "127.0.0.1:8001"}
    topology = load_dev_topology(args.topology, {**os.environ, **placeholders})
    try:
        metrics_port = dev_metrics_port(args.metrics_port, topology)
        metrics_socket = metrics_listener(metrics_port, args.metrics_port, topology)
    except MetricsPortTaken as err:
        print(f"pipeline dev: {err} (--metrics-port 0: none)", file=sys.stderr)
        return 2
    options = DevOptions(
        args.topology,
        args.workdir,
        args.events,
        args.rate,
        args.timeout,
        args.report_every,
        args.recycle_growth,
        reacting=args.reacting,
        react_share=DEFAULT_SHARE if args.react_share is None else args.react_share,
        experiment=args.experiment,
        model_repository=args.model_repository,
        metrics_port=metrics_port if metrics_socket is None else metrics_socket.getsockname()[1],
        metrics_socket=metrics_socket,
        default_workdir=args.workdir == DEFAULT_DEV_WORKDIR,
    )
    try:
        summary = run_dev_stack(options)
    except KeyboardInterrupt:
        print("pipeline dev: interrupted while starting; what it had started is stopped", file=sys.stderr)
        return 130
    print(orjson.dumps(summary).decode(), flush=True)
    return 0 if summary["lost"] == 0 else 1


def _time_range(args: argparse.Namespace, command: str) -> TimeRange | None:
    """--since/--until as a TimeRange; None, the bad one named in one line, if unreadable."""
    from pipeline.audit import TimeRange, parse_instant

    now_ms = time.time_ns() // 1_000_000
    try:
        return TimeRange(
            parse_instant(args.since, now_ms) if args.since else None,
            parse_instant(args.until, now_ms) if args.until else None,
        )
    except ValueError as err:
        print(f"{command}: {err}", file=sys.stderr)
        return None


def cmd_audit(args: argparse.Namespace) -> int:
    from pipeline.audit import audit_topology

    _setup_logging(args, "WARNING")
    if (window := _time_range(args, "pipeline audit")) is None:
        return 2
    from aiokafka.errors import KafkaError

    if args.log_level != "DEBUG":  # its "Unable connect" errors: the one line below says it
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topology = load_topology(args.topology)
    bound_ms = topology.deadline.end_to_end_ms if args.in_flight_ms is None else args.in_flight_ms
    try:
        summary = asyncio.run(audit_topology(topology, window, bound_ms))
    except (KafkaError, TimeoutError, OSError) as err:  # exit 1 means lost inputs: not this
        servers = topology.broker.bootstrap_servers
        print(f"pipeline audit: broker.bootstrap_servers: no answer at {servers} ({err})", file=sys.stderr)
        return 2
    print(orjson.dumps(summary).decode())
    if summary.get("group_members") == 0 and summary.get("in_flight"):
        print(f"pipeline audit: {summary['in_flight_note']}", file=sys.stderr)
    return 0 if summary["lost"] == 0 else 1


def cmd_experiment(args: argparse.Namespace) -> int:
    from pipeline.quality.report import experiment_report

    _setup_logging(args, "WARNING")
    if (window := _time_range(args, "pipeline experiment")) is None:
        return 2
    topology = load_topology(args.topology)
    where = f"reading the topics at {topology.broker.bootstrap_servers}"
    return _print_summary(
        f"pipeline experiment: {where}", experiment_report(topology, args.attribution_ms, window)
    )


def _print_summary(command: str, work: Coroutine[Any, Any, dict[str, Any]]) -> int:
    """Run ``work`` and print its summary as one JSON line: 0; or one line naming what failed
    (the broker, a timeout, a file): 1."""
    from aiokafka.errors import KafkaError

    from pipeline.replay.files import UnreadableFile

    try:
        summary = asyncio.run(work)
    except (UnreadableFile, KafkaError, TimeoutError, OSError) as err:
        print(f"{command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(orjson.dumps(summary).decode())
    return 0


def cmd_state_build(args: argparse.Namespace) -> int:
    from pipeline.replay.files import EventFile
    from pipeline.replay.mapping import load_mapping
    from pipeline.state.build import build_state

    _setup_logging(args, "WARNING")
    topology = load_topology(args.topology)
    if not args.file.is_file():
        raise TopologyError(str(args.file), "", "no such file")
    events = EventFile(args.file, load_mapping(args.mapping) if args.mapping else None, args.format)
    events.check_columns()  # a column the mapping names and the file lacks: exit 2 before the broker
    return _print_summary("pipeline state build", build_state(topology, events))


def cmd_redrive(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from pipeline.redrive import RedriveError, redrive

    _setup_logging(args, "WARNING")
    bar = {"auto": None, "bar": True, "log": False}[args.progress]
    topology = load_topology(args.topology)
    try:
        report = asyncio.run(redrive(topology, args.reason, args.dry_run, args.rate, bar))
    except RedriveError as err:  # exit 2 a verdict (a missing topic), 1 a broker away
        print(f"pipeline redrive: {args.topology}: {err}", file=sys.stderr)
        return err.exit_code
    except (KafkaError, TimeoutError, OSError) as err:  # the broker failed us part-way
        print(f"pipeline redrive: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(orjson.dumps(report).decode())
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from pipeline.topics_create import create_topics, wanted_topics

    _setup_logging(args, "WARNING")
    if args.log_level != "DEBUG":  # its "Unable connect" errors: the one line below says it
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topology = load_topology(args.topology)
    partitions = args.partitions, args.output_partitions, args.dead_letter_partitions
    wanted = wanted_topics(topology, *partitions, replication_factor=args.replication_factor)
    try:
        lines = asyncio.run(create_topics(topology, wanted, args.dry_run))
    except Fatal as err:  # the broker away (exit 2), its TLS or SASL refused (exit 2)
        print(f"pipeline topics create: {args.topology}: {err}", file=sys.stderr)
        return err.exit_code
    for line in lines:
        print(line, flush=True)
    statuses = {line.status for line in lines}
    return 1 if "problem" in statuses else 2 if "failed" in statuses else 0


TOPICS_CREATE_HELP = """\
Create every topic the topology needs, as a deploy Job's step before `pipeline run` (which
only checks that they exist): the input topics (source.topics, co-partitioned: one count),
the output (sink.topic), the dead letters (sink.dead_letter_topic), the joined examples
(outcomes.examples_topic, when set) and, when state.dir is set (or PIPELINE_STATE_DIR), the
state changelog (state.changelog_topic: compacted, with the inputs' partition count). Input
topics that exist already set the count of every topic made (and always the changelog's).

Idempotent: one line per topic, `created`, `exists` (with the partition count wanted, and a
changelog the broker reports compacted), `problem` (another partition count, a changelog
not compacted or compacted and deleted with a retention, a creation the broker refused for
good: reported, never altered), `held` (not made because an input is a problem) or `failed`
(the broker failed for now). Exit 0: every topic is there as wanted; 1: a problem, which no
retry fixes; 2: no broker answered at broker.bootstrap_servers within 15 s, or it failed
part-way (a retry may fix it), or it refused the topology's TLS or SASL, or the topology is
invalid. Connects as every client does (broker: TLS, SASL, PIPELINE_BOOTSTRAP_SERVERS).
Topics are made with the broker's default replication factor (the changelog with
state.changelog_replication_factor), unless --replication-factor says otherwise; an existing
topic's is shown, not judged."""


class _UnsetAsPlaceholder(dict[str, str]):
    """The environment, with a placeholder for what is not set: sizing reads no secret."""

    def get(self, key: str, default: str | None = None) -> str:  # type: ignore[override]
        return super().get(key, "unset")


def cmd_resources(args: argparse.Namespace) -> int:
    from pipeline.sizing import format_budget, memory_budget

    topology = load_topology(args.topology, env=_UnsetAsPlaceholder(os.environ))
    print(format_budget(memory_budget(topology, args.partitions)))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from pipeline.topology.schema import Topology

    print(orjson.dumps(Topology.model_json_schema(), option=orjson.OPT_INDENT_2).decode())
    return 0


BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench"  # python runs its __main__.py


def bench(argv: list[str]) -> int:
    """scripts/bench with the arguments after `bench`, passed on untouched (a
    checkout's tool: it writes docs/bench_throughput.md and starts its own embedded stack)."""
    if not (BENCH_SCRIPT / "__main__.py").is_file():
        print("pipeline bench runs scripts/bench from a checkout of the project", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(BENCH_SCRIPT), *argv])


def _version() -> str:
    try:
        return metadata.version("recommendation-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON"
    )
    common.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="default: the topology's operations.log_level for run, INFO for dev, WARNING otherwise",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = command("run", "run the pipeline of a topology until SIGTERM")
    p.add_argument("topology", type=Path)
    # worker i serves its metrics on metrics_port + i
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes in the consumer group")
    p.set_defaults(func=cmd_run)

    p = command("validate", "check topology files; exit 2 if any is invalid")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = command("topics", "the topology's Kafka topics: create them (a deploy Job's step)")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser(
        "create",
        help="create every topic the topology needs, with its partitions and configs; idempotent",
        description=TOPICS_CREATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    c.add_argument("topology", type=Path)
    c.add_argument(
        "--partitions",
        type=positive_int,
        metavar="N",
        help="partitions of every input topic and of the changelog (default: the existing inputs' "
        "count, else 12: deploy/k8s's maxReplicaCount, at most one member a partition)",
    )
    c.add_argument(
        "--output-partitions",
        type=positive_int,
        metavar="N",
        help="partitions of the output and joined-example topics (default: --partitions)",
    )
    c.add_argument(
        "--dead-letter-partitions",
        type=positive_int,
        metavar="N",
        help="partitions of the dead-letter topic (default: --partitions)",
    )
    c.add_argument(
        "--replication-factor",
        type=positive_int,
        metavar="N",
        help="replicas of every topic made (default: the broker's default; the changelog's: "
        "state.changelog_replication_factor)",
    )
    c.add_argument("--dry-run", action="store_true", help="report what would be created, create nothing")
    c.set_defaults(func=cmd_topics_create)

    p = command(
        "resources", "a member's memory bound from the topology, term by term, and its Kubernetes sizes"
    )
    p.add_argument("topology", type=Path)
    p.add_argument(
        "--partitions",
        type=positive_int,
        default=12,
        metavar="N",
        help="input partitions one member may hold (default 12: the input topic's count)",
    )
    p.set_defaults(func=cmd_resources)

    p = command("dev", "run everything on the embedded broker and Triton")
    p.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY)
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_DEV_WORKDIR,
        help="the broker's and Triton's logs, and the running topology (topology.yaml)",
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        default=Path("var/model_repository"),
        metavar="DIR",
        help="the Triton model repository served (trained first if it has no model); "
        "`pipeline train --out DIR` writes its next version",
    )
    p.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help=f"/metrics and the probes (default: the topology's, else {DEV_METRICS_PORT} or a free "
        "port if taken; 0: none)",
    )
    p.add_argument(
        "--events",
        type=positive_int,
        default=None,
        help="feed N events, stop once all are accounted for, print a summary",
    )
    p.add_argument("--rate", type=non_negative_float, default=0.0, help="events per second (0: unlimited)")
    p.add_argument("--timeout", type=positive_float, default=300.0)
    p.add_argument("--report-every", type=positive_float, default=30.0, help="seconds between progress lines")
    p.add_argument(
        "--recycle-growth",
        type=non_negative_float,
        default=0.15,
        help="restart the embedded broker once its CPU grew by this share of a core (0: at every report)",
    )
    p.add_argument(
        "--reacting",
        action="store_true",
        help="users' next items follow their latest recommendation, the more it fits their taste "
        "(online quality then depends on the model)",
    )
    p.add_argument(
        "--react-share",
        type=reaction_share,
        metavar="SHARE",
        help="with --reacting: the chance, for a recommendation wholly in the user's taste, that "
        "the next item is one of it (default 0.6)",
    )
    p.add_argument(
        "--experiment",
        action="store_true",
        help="the trained model against the popularity baseline, 50/50 by user, a random version "
        "in the shadow, users reacting; the summary gives each arm's online hit@K",
    )
    p.set_defaults(func=cmd_dev)

    def topics_read(p: argparse.ArgumentParser) -> None:
        p.add_argument("topology", type=Path)
        p.add_argument("--since", help="inputs produced from: ISO 8601 time or ago (90m, 2h, 7d)")
        p.add_argument("--until", help="inputs produced before: ISO 8601 time or ago")

    p = command("audit", "account for every input event of a topology")
    topics_read(p)
    p.add_argument(
        "--in-flight-ms",
        type=non_negative_int,
        metavar="MS",
        help="an unanswered input younger than this, not yet committed by the pipeline's group, is "
        "in flight, not lost (default: the topology's deadline.end_to_end_ms; 0: every unanswered "
        "input is lost, for a stopped pipeline)",
    )
    p.set_defaults(func=cmd_audit)

    p = command("experiment", "each model version's recommendations judged by what users did next")
    topics_read(p)
    p.add_argument(
        "--attribution-ms",
        type=positive_int,
        default=1_800_000,
        help="how long after a recommendation (event time) its user's next interaction counts",
    )
    p.set_defaults(func=cmd_experiment)
    add_tail_command(sub, common, _setup_logging)

    p = command("redrive", "re-send dead letters of chosen reasons to the input")
    p.add_argument("topology", type=Path)
    p.add_argument(
        "--reason",
        action="append",
        required=True,
        type=reason_argument,
        help="dead-letter reason to re-drive (repeatable), e.g. invalid_argument",
    )
    p.add_argument("--dry-run", action="store_true", help="count only, send nothing")
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=0.0,
        help="re-sends per second (0: as fast as acknowledged)",
    )
    p.add_argument("--progress", choices=["auto", "bar", "log"], default="auto")
    p.set_defaults(func=cmd_redrive)
    add_replay_command(sub, common)
    add_train_command(sub, common)
    p = command("state", "users' histories: build them from past events (a warm start)")
    actions = p.add_subparsers(dest="action", required=True)
    b = actions.add_parser(
        "build",
        help="merge the histories of a file's events into the topology's changelog (group stopped)",
        parents=[common],
    )
    b.add_argument("--topology", type=Path, required=True)
    b.add_argument("--file", type=Path, required=True, help="events: JSON lines or CSV, .gz or not")
    b.add_argument("--mapping", type=Path, help="YAML column mapping (as pipeline replay's)")
    b.add_argument("--format", choices=["jsonl", "csv"], help="default: told by the file name")
    b.set_defaults(func=cmd_state_build)
    p = command("schema", "print the topology files' JSON Schema (for editors)")
    p.set_defaults(func=cmd_schema)
    # listed for --help; main() hands `bench ...` to the script before parsing
    command("bench", "throughput benchmark (scripts/bench; its options follow)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TopologyError as err:
        print(str(err), file=sys.stderr)
        return 2
    except Fatal as err:
        print(f"pipeline stopped: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
