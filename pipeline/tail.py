"""`pipeline tail [TOPIC]`: a topic's latest records, one readable line each: a
recommendation as ``user → items (model version, latency)``, a dead letter with its reason
headers, an input as its JSON. It finds the broker in a topology (``--topology``, as every
client connects: TLS, SASL), at ``--bootstrap``, or else in the running dev stack's workdir
(the topology `pipeline dev` writes there)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline import kafka_clients
from pipeline.arguments import positive_int
from pipeline.devstack.watch import RUNNING_TOPOLOGY, gone_writer
from pipeline.events import Headers, RawRecord
from pipeline.kafka_io import batches_to_end, broker_at, high_watermarks, topic_partitions
from pipeline.sources.undecodable import DECODE_ERRORS, raw, step_past_undecodable
from pipeline.topology.loader import load_topology
from pipeline.topology.schema import Broker, Topology, bootstrap_problem

START_TIMEOUT_S = 15.0  # for the broker to answer the consumer's bootstrap
SHOWN_ITEMS = 10
SHOWN_VALUE_CHARS = 300


class TailError(Exception):
    """A reason to stop before reading, said in one line (exit 2)."""


def _clip(text: str, limit: int = SHOWN_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def recommendation_line(doc: dict[str, Any]) -> str:
    """``user 412 → 3021, 77, … (recommender v1, 31 ms, lane default)``."""
    items = [str(item.get("item_id")) for item in doc.get("items", [])]
    shown = ", ".join(items[:SHOWN_ITEMS]) + (f", … ({len(items)})" if len(items) > SHOWN_ITEMS else "")
    model = doc.get("model") or {}
    latency = (doc.get("timings") or {}).get("end_to_end_ms")
    details = [f"{model.get('name', '?')} v{model.get('version', '?')}"]
    if latency is not None:
        details.append(f"{float(latency):.0f} ms")
    if doc.get("lane"):
        details.append(f"lane {doc['lane']}")
    answered = doc.get("source_count", len(doc.get("sources", [])))
    if answered != 1:
        details.append(f"{answered} events")
    return f"user {doc.get('user_id')} → {shown or '(none)'} ({', '.join(details)})"


def dead_letter_line(headers: dict[str, str], value: bytes | None) -> str:
    """``dead letter malformed_json (InvalidEvent: …) of interactions[2]@1041: <value>``."""
    cause = headers.get("dlq.error_class", "")
    detail = headers.get("dlq.detail", "")
    why = f" ({cause}: {detail})" if cause or detail else ""
    source = (
        f" of {headers['dlq.source_topic']}[{headers.get('dlq.source_partition', '?')}]"
        f"@{headers.get('dlq.source_offset', '?')}"
        if "dlq.source_topic" in headers
        else ""
    )
    attempts = headers.get("dlq.attempts")
    tries = f", {attempts} attempts" if attempts not in (None, "0", "1") else ""
    return f"dead letter {headers['dlq.reason']}{why}{source}{tries}: {_value_text(value)}"


def _value_text(value: bytes | None) -> str:
    if value is None:
        return "(no value)"
    try:
        return _clip(orjson.dumps(orjson.loads(value)).decode())
    except orjson.JSONDecodeError:
        return _clip(repr(value))


def render(record: RawRecord) -> str:
    """One line for a record: where it is, when it was produced, and what it says."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.timestamp_ms / 1000))
    where = f"{stamp}.{record.timestamp_ms % 1000:03d} {record.topic}[{record.partition}]@{record.offset}"
    return f"{where}  {describe(record)}"


def describe(record: RawRecord) -> str:
    if record.undecodable is not None:
        return f"undecodable: {record.undecodable}"
    headers = _text_headers(record.headers)
    if "dlq.reason" in headers:
        return dead_letter_line(headers, record.value)
    try:
        doc = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return f"not JSON: {_value_text(record.value)}"
    if isinstance(doc, dict) and "items" in doc and "user_id" in doc:
        return recommendation_line(doc)
    return _clip(orjson.dumps(doc).decode())


def _text_headers(headers: Headers) -> dict[str, str]:
    return {key: (value or b"").decode("utf-8", "replace") for key, value in headers}


async def _started_consumer(broker: Broker) -> AIOKafkaConsumer:
    consumer = kafka_clients.consumer(broker, client_suffix="-tail", auto_offset_reset="earliest")
    try:
        await asyncio.wait_for(consumer.start(), START_TIMEOUT_S)
    except BaseException as exc:  # whatever stopped the start, the consumer is closed
        with contextlib.suppress(Exception):
            await consumer.stop()
        if isinstance(exc, TimeoutError | KafkaConnectionError):
            raise TailError(f"nothing answers at {broker.bootstrap_servers}") from None
        raise
    return consumer


async def tail(
    broker: Broker,
    topic: str,
    last: int,
    follow: bool = False,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
) -> int:
    """Print the ``last`` records of ``topic`` (each partition's, merged by time and cut to
    ``last``) and, with ``follow``, every record that comes after until ``stop`` is set.
    Returns how many were printed."""
    consumer = await _started_consumer(broker)
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise TailError(f"topic {topic}: not found at {broker.bootstrap_servers}")
        ends = await high_watermarks(consumer, tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - last))
        latest: list[RawRecord] = []
        async for batch in batches_to_end(consumer, tps, ends=ends):
            for records in batch.values():
                latest.extend(records)
        latest = sorted(latest, key=lambda r: (r.timestamp_ms, r.partition, r.offset))[-last:]
        for record in latest:
            print(render(record), file=out, flush=True)
        printed = len(latest)
        if follow:
            printed += await _follow(consumer, tps, ends, out, stop or asyncio.Event())
        return printed
    finally:
        await consumer.stop()


async def _follow(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    ends: dict[TopicPartition, int],
    out: TextIO,
    stop: asyncio.Event,
) -> int:
    for tp in tps:
        consumer.seek(tp, ends[tp])
    positions = dict(ends)  # next offset to print, where a record the client cannot decode is looked for
    printed = 0
    while not stop.is_set():
        try:
            got = await consumer.getmany(*tps, timeout_ms=500)
            batch = {tp: [raw(m) for m in messages] for tp, messages in got.items()}
        except DECODE_ERRORS:  # printed as its marker, as the catch-up read does
            batch = await step_past_undecodable(consumer, positions, limit=10_000, stop=stop)
        for tp, records in batch.items():
            if records:
                positions[tp] = records[-1].offset + 1
        for record in sorted((r for rs in batch.values() for r in rs), key=lambda r: r.timestamp_ms):
            print(render(record), file=out, flush=True)
            printed += 1
    return printed


def where_to_read(topology: Path | None, bootstrap: str | None, workdir: Path) -> Topology | Broker:
    """The topology given, the broker at ``bootstrap``, or the dev stack's running topology."""
    if topology is not None:
        return load_topology(topology)
    if bootstrap is not None:
        return broker_at(bootstrap)
    running = workdir / RUNNING_TOPOLOGY
    how = "start `pipeline dev`, or give --workdir DIR, --topology FILE or --bootstrap HOST:PORT"
    if not running.is_file():
        raise TailError(f"no dev stack runs in {workdir} (no {running}): {how}")
    if (pid := gone_writer(running)) is not None:
        raise TailError(
            f"no dev stack runs in {workdir}: the `pipeline dev` (pid {pid}) that wrote {running} "
            f"is gone: {how}"
        )
    return load_topology(running)


def cmd_tail(args: argparse.Namespace, setup_logging: Callable[[argparse.Namespace, str], None]) -> int:
    setup_logging(args, "WARNING")
    if args.log_level != "DEBUG":  # its "Unable connect" errors: the one line below says it
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        source = where_to_read(args.topology, args.bootstrap, args.workdir)
        broker = source.broker if isinstance(source, Topology) else source
        topic = args.topic or (source.sink.topic if isinstance(source, Topology) else None)
        if topic is None:
            raise TailError("which topic? (TOPIC, or --topology FILE for its output topic)")
        printed = asyncio.run(_until_signal(broker, topic, args.lines, args.follow))
    except TailError as err:
        print(f"pipeline tail: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # read by `head` and the like, which stopped reading: done
        _quiet_stdout()
        return 0
    except (KafkaError, TimeoutError, OSError) as err:  # the broker failed us part-way
        print(f"pipeline tail: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if printed == 0 and not args.follow:
        print(f"pipeline tail: {topic}: no records yet", file=sys.stderr)
    return 0


def _quiet_stdout() -> None:
    """Stdout to /dev/null: the interpreter's last flush at exit would meet the closed pipe
    again and print a BrokenPipeError of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def bootstrap_address(text: str) -> str:
    """--bootstrap: host:port (port 1-65535), comma-separated, as the topology's broker."""
    if (problem := bootstrap_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


async def _until_signal(broker: Broker, topic: str, last: int, follow: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await tail(broker, topic, last, follow, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def add_tail_command(
    sub: Any,
    common: argparse.ArgumentParser,
    setup_logging: Callable[[argparse.Namespace, str], None],
) -> None:
    p = sub.add_parser(
        "tail",
        help="a topic's latest records, readably (recommendations, dead letters, inputs)",
        parents=[common],
    )
    p.add_argument("topic", nargs="?", help="default: the topology's output topic")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--topology", type=Path, help="connect as this topology does (TLS, SASL)")
    where.add_argument(
        "--bootstrap", type=bootstrap_address, metavar="HOST:PORT", help="a plaintext broker's address"
    )
    where.add_argument(
        "--workdir",
        type=Path,
        default=Path("var/devstack"),
        help="the running `pipeline dev`'s workdir (default var/devstack): its broker and topics",
    )
    p.add_argument("-n", "--lines", type=positive_int, default=10, metavar="N", help="records shown (10)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="then print records as they come, until Ctrl-C"
    )
    p.set_defaults(func=lambda args: cmd_tail(args, setup_logging))
