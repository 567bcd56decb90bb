"""`pipeline replay`: send past events into a backfill topology's input topic.

    pipeline replay --topology topologies/backfill.yaml --file history.csv.gz --mapping map.yaml
    pipeline replay --topology topologies/backfill.yaml --file events.jsonl --rate 2000
    pipeline replay --topology topologies/backfill.yaml --topic interactions \\
        --since 2026-11-25T10:00:00Z --until 2026-11-25T11:00:00Z
    pipeline replay ... --dry-run          # counts and first rows per dead-letter reason, sends nothing

The broker (and its TLS/SASL settings) and the destination come from the topology: its input
topic, or --to when it has several. Progress is checkpointed as the broker acknowledges; an
interrupted replay (Ctrl-C, SIGKILL) run again with the same arguments continues where it
stopped and sends no acknowledged row twice. A row that cannot be delivered (larger than the
producer accepts, or a source record the client cannot decode) goes to a reject file beside
the checkpoint (--rejects), counted, and the replay goes on. The last line is a JSON summary.

Before anything else the columns a --mapping reads are checked against the file's (exit 2,
naming the key and the column). A dry run exits 1 when more than --max-reject-share of the
rows to send would be dead-lettered or set aside.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from pipeline import kafka_clients, procfs
from pipeline.arguments import non_negative_float, non_negative_int, positive_int, share
from pipeline.errors import TopologyError
from pipeline.kafka_io import ensure_topics
from pipeline.replay.checkpoint import Checkpoint, CheckpointMismatch, resume_or_start
from pipeline.replay.columns import field_columns
from pipeline.replay.dry_run import dry_run
from pipeline.replay.dry_run_report import DEFAULT_MAX_SHARE, describe, verdict
from pipeline.replay.files import EventFile, Row, UnreadableFile, count_rows
from pipeline.replay.mapping import load_mapping
from pipeline.replay.progress import Progress
from pipeline.replay.rejects import MAX_REQUEST_BYTES, RejectFile, rejects_path
from pipeline.replay.sender import ReplayFailed, Sender, destination_ends, rows_already_sent
from pipeline.replay.topic import DISORDER_MS, TopicRange
from pipeline.topology.loader import load_topology
from pipeline.topology.schema import Topology
from pipeline.wiring import parse_rules

log = logging.getLogger("pipeline.replay")
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
YIELD_EVERY = 256  # rows read between turns of the event loop (a file read never yields)


def add_replay_command(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "replay",
        help="replay events from a file or a topic range into a backfill topology's input",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    p.add_argument("--topology", type=Path, required=True, help="the topology that reads the replay")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="JSON lines or CSV, plain or gzip-compressed")
    source.add_argument("--topic", help="a topic to replay a time range of")
    p.add_argument("--mapping", type=Path, help="YAML column mapping for files with their own columns")
    p.add_argument("--format", choices=["jsonl", "csv"], help="default: told by the file name")
    p.add_argument("--since", help="topic replay: ISO time, inclusive")
    p.add_argument("--until", help="topic replay: ISO time, exclusive")
    p.add_argument(
        "--disorder-ms",
        type=non_negative_int,
        default=DISORDER_MS,
        help="topic replay: how far out of order record timestamps may be; each partition is "
        "read this much past both ends of the range, and every record judged by its own time "
        f"(default {DISORDER_MS})",
    )
    p.add_argument("--to", help="destination topic (default: the topology's input, if it has one)")
    p.add_argument(
        "--rate", type=non_negative_float, default=0.0, help="rows per second (0: as fast as acknowledged)"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="progress file (default: .pipeline-replay/<source>-<destination>.json here)",
    )
    p.add_argument(
        "--rejects",
        type=Path,
        help="rows that cannot be delivered, JSON lines (default: beside the checkpoint, "
        "<checkpoint stem>.rejects.jsonl)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="ignore the checkpoint (and remove it and its reject file): a new run from row 0",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every row, count dead-letter reasons, show the first rows of each",
    )
    p.add_argument(
        "--max-reject-share",
        type=share,
        default=DEFAULT_MAX_SHARE,
        metavar="SHARE",
        help="dry run: exit 1 when more than this share of the rows to send would be "
        f"dead-lettered or set aside (0 to 1; default {DEFAULT_MAX_SHARE})",
    )
    p.add_argument("--progress", choices=["auto", "bar", "log"], default="auto")
    p.add_argument("--partitions", type=positive_int, default=4, help="partitions if the destination is new")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    topology = load_topology(args.topology)
    destination = _destination(args, topology)
    source, identity = _source(args, topology)
    started = time.monotonic()
    progress: Progress | None = None
    report: dict[str, Any] = {"dry_run": True} if args.dry_run else {}
    try:
        if isinstance(source, EventFile):
            source.check_columns()  # a column the mapping names and the file lacks: exit 2 now
        total = count_rows(source.path, source.format) if isinstance(source, EventFile) else None
        progress = Progress(total, bar={"auto": None, "bar": True, "log": False}[args.progress])
        if args.dry_run:
            mapping = source.mapping if isinstance(source, EventFile) else None
            columns = field_columns(mapping) if mapping is not None else None
            report = asyncio.run(
                dry_run(_rows(source, 0), parse_rules(topology), destination, "dry-run", progress, columns)
            )
            code = 0
        else:
            path = _checkpoint_path(args.checkpoint, identity, destination)
            path.parent.mkdir(parents=True, exist_ok=True)
            if args.restart:
                path.unlink(missing_ok=True)
                (args.rejects or rejects_path(path)).unlink(missing_ok=True)
            try:
                checkpoint = resume_or_start(path, identity, destination)
            except CheckpointMismatch as err:
                raise TopologyError(str(path), err.field, str(err).removeprefix(f"{path}: ")) from None
            if isinstance(source, TopicRange):
                same_disorder(checkpoint, source, path)
            code, report = asyncio.run(
                _replay(topology, source, destination, checkpoint, path, args, progress)
            )
    except UnreadableFile as err:
        code = EXIT_FAILED
        report["error"] = str(err)
    except KeyboardInterrupt:  # before the replay's own handler (counting rows, the resume's scan)
        code = EXIT_INTERRUPTED
        report["error"] = "interrupted"
    except (KafkaError, TimeoutError, OSError) as err:  # the broker, or the file, failed us
        code = EXIT_FAILED
        report["error"] = f"{type(err).__name__}: {err}"
        log.error("replay stopped: %s", report["error"])
    finally:
        if progress is not None:
            progress.close()
    if args.dry_run and "error" not in report:
        code = _dry_run_verdict(report, args.max_reject_share)
    elapsed = time.monotonic() - started
    report.update(
        source=identity,
        destination=destination,
        elapsed_s=round(elapsed, 3),
        peak_rss_mb=peak_rss_mb(),
    )
    print(orjson.dumps(report).decode())
    return code


def _dry_run_verdict(report: dict[str, Any], max_share: float) -> int:
    """The report for a person on stderr (the JSON line stays stdout's last); exit 1 past
    ``max_share`` of the rows failing."""
    for line in describe(report):
        print(line, file=sys.stderr)
    too_many = verdict(report, max_share)
    if too_many is None:
        return 0
    print(too_many, file=sys.stderr)
    return EXIT_FAILED


async def _replay(
    topology: Topology,
    source: EventFile | TopicRange,
    destination: str,
    checkpoint: Checkpoint,
    path: Path,
    args: argparse.Namespace,
    progress: Progress,
) -> tuple[int, dict[str, Any]]:
    await ensure_topics(topology.broker, [destination], args.partitions)
    already: set[int] = set()
    if not checkpoint.finished:  # (a finished one sends nothing: no need to read the destination)
        already = await _prepare(topology, source, destination, checkpoint, path)
    resumed_at = checkpoint.next_row
    producer = kafka_clients.producer(
        topology.broker,
        client_suffix="-replay",
        linger_ms=20,
        max_batch_size=256 * 1024,
        max_request_size=MAX_REQUEST_BYTES,  # what the dry run measures rows against
    )
    await producer.start()
    stop = asyncio.Event()
    _on_stop_signals(stop.set)
    rejects = RejectFile(args.rejects or rejects_path(path), checkpoint.run_id, checkpoint.next_row)
    sender = Sender(
        producer, destination, checkpoint, path, progress, args.rate, already_sent=already, rejects=rejects
    )
    code = 0
    error = None
    try:
        if checkpoint.finished:
            log.info("replay: %s is finished already (--restart to run it again)", path)
        else:
            done = await sender.run(_rows(source, resumed_at), stop)
            code = 0 if done else EXIT_INTERRUPTED
    except (ReplayFailed, UnreadableFile, KafkaError, TimeoutError, OSError) as err:
        code, error = EXIT_FAILED, str(err) or type(err).__name__
        log.error("replay stopped: %s; its checkpoint %s resumes it", err, path)
    finally:
        await producer.stop()
        rejects.close()
    counts = sender.counts
    report: dict[str, Any] = {
        "run_id": checkpoint.run_id,
        "finished": checkpoint.finished,
        "resumed_at_row": resumed_at,
        "rows_read": counts.read,
        "sent": counts.sent,
        "acknowledged": counts.acknowledged,
        "skipped": counts.skipped,
        "outside_time_range": counts.outside_time_range,
        "already_sent": counts.already_sent,
        "rejected": counts.rejected,
        "checkpoint": str(path),
        "next_row": checkpoint.next_row,
    }
    if checkpoint.rejected or counts.rejected:
        report["rejected_in_all_runs"] = checkpoint.rejected
        report["rejects"] = str(rejects.path)
    if error:
        report["error"] = error
    return code, report


async def _prepare(
    topology: Topology, source: EventFile | TopicRange, destination: str, checkpoint: Checkpoint, path: Path
) -> set[int]:
    """A fresh run: where the topic range and the destination start, saved before any send.
    A resumed one: the rows past its checkpoint that are in the destination already."""
    consumer = kafka_clients.consumer(topology.broker, client_suffix="-replay-resume")
    await consumer.start()
    try:
        if isinstance(source, TopicRange):
            if checkpoint.source_offsets:  # the range located by the first run: rows keep their numbers
                source.offsets = {p: (first, end) for p, (first, end) in checkpoint.source_offsets.items()}
            elif checkpoint.next_row or checkpoint.partition_marks:
                raise TopologyError(
                    str(path), "source_offsets", "the checkpoint does not say where the range is (--restart)"
                )
            else:
                checkpoint.source_offsets = {p: list(o) for p, o in (await source.locate()).items()}
                checkpoint.disorder_ms = source.disorder_ms  # what the span was located with
        if checkpoint.next_row == 0 and not checkpoint.partition_marks:
            checkpoint.partition_marks = await destination_ends(consumer, destination)
            checkpoint.save(path)
            return set()
        return await rows_already_sent(consumer, checkpoint, destination)
    finally:
        await consumer.stop()


def same_disorder(checkpoint: Checkpoint, source: TopicRange, path: Path) -> None:
    """A topic range resumes only with the --disorder-ms its span was located with: the span's
    ends come from it, and its rows are numbered by them, so a resume cannot move them. A
    checkpoint of a release that did not record it resumes with a warning: its end is the
    partition's end (read further, each record judged by its own time) and only its start,
    passed already, was located without the window."""
    if not checkpoint.source_offsets or checkpoint.disorder_ms == source.disorder_ms:
        return
    if checkpoint.disorder_ms is None:
        log.warning(
            "%s: located by a release that did not record --disorder-ms: resuming to the end the "
            "partitions had then (records out of order before its start stay unread; --restart "
            "locates the range again)",
            path,
        )
        return
    problem = (
        f"the range was located with --disorder-ms {checkpoint.disorder_ms}, not "
        f"{source.disorder_ms}: pass --disorder-ms {checkpoint.disorder_ms} to resume it, "
        "or --restart to locate it again"
    )
    raise TopologyError(str(path), "disorder_ms", problem)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike getrusage's maxrss, not inherited
    from the parent that started it)."""
    peak = procfs.peak_rss_mb()
    return round(peak, 1) if peak is not None else float("nan")


def _destination(args: argparse.Namespace, topology: Topology) -> str:
    if args.to:
        return str(args.to)
    topics = topology.source.topics
    if len(topics) != 1:
        raise TopologyError(
            str(args.topology), "source.topics", f"reads {len(topics)} topics: say which with --to"
        )
    return topics[0]


def _source(args: argparse.Namespace, topology: Topology) -> tuple[EventFile | TopicRange, str]:
    if args.topic:
        try:
            source = TopicRange(topology.broker, args.topic, args.since, args.until, args.disorder_ms)
        except ValueError as err:
            raise TopologyError("--since/--until", "", f"not an ISO 8601 time: {err}") from None
        return source, source.identity
    if not args.file.is_file():
        raise TopologyError(str(args.file), "", "no such file")
    mapping = load_mapping(args.mapping) if args.mapping else None
    events = EventFile(args.file, mapping, args.format)
    stat = args.file.stat()
    # The file as it is now: a checkpoint never resumes a different file under the same name.
    return events, f"file:{args.file.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"


def _checkpoint_path(given: Path | None, identity: str, destination: str) -> Path:
    """``given``, else named after the source without its version (a file's size and mtime):
    a changed file finds its old checkpoint and is refused, instead of starting over and
    sending every row again."""
    if given is not None:
        return given
    if identity.startswith("file:"):
        identity = identity.rsplit(":", 2)[0]
    digest = hashlib.sha1(f"{identity}\x1f{destination}".encode()).hexdigest()[:12]
    name = identity.split(":")[1].rsplit("/", 1)[-1]
    return Path(".pipeline-replay") / f"{name}-{destination}-{digest}.json"


async def _rows(source: EventFile | TopicRange, start: int) -> AsyncIterator[Row]:
    if isinstance(source, TopicRange):
        async for row in source.rows(start):
            yield row
        return
    for row in source.rows(start):
        yield row
        if row.number % YIELD_EVERY == 0:
            await asyncio.sleep(0)


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """First SIGINT/SIGTERM: stop reading, wait for the acknowledgements, save; second: exit."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if getattr(on_signal, "seen", False):
            log.error("second %s: exiting now (the checkpoint holds what was acknowledged)", sig.name)
            os._exit(128 + sig.value)
        on_signal.seen = True  # type: ignore[attr-defined]
        log.info("%s: finishing the sends in flight and saving the checkpoint", sig.name)
        stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
