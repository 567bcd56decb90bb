"""`pipeline dev`: the whole product on one machine. Starts the embedded broker and Triton,
creates the topics, runs the pipeline on a topology, feeds it synthetic events and keeps
the books: with ``--events N`` it stops once all N are accounted for and prints a summary
JSON object as its last line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.audit import Ledger
from pipeline.devstack.stack import EmbeddedStack
from pipeline.kafka_io import ensure_topics
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.runtime import PipelineRuntime
from pipeline.topology.loader import load_topology
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)
INPUT_PARTITIONS = 4


@dataclass(frozen=True)
class DevOptions:
    topology: Path
    workdir: Path
    events: int | None = None  # None: run until interrupted
    rate: float = 0.0  # events per second; 0: as fast as the producer goes
    timeout_s: float = 300.0


def live_events(config: GeneratorConfig, count: int | None) -> Iterator[dict[str, object]]:
    """Synthetic events stamped with the current time (the pipeline rejects stale ones)."""
    gen = EventGenerator(config)
    for event in gen.events(count if count is not None else 10**12):
        event["ts"] = time.time_ns() // 1_000_000
        yield event


async def feed(
    topology: Topology, events: Iterator[dict[str, object]], ledger: Ledger, rate: float, stop: asyncio.Event
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=topology.broker.bootstrap_servers, enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    topic = topology.source.topics[0]
    sent = 0
    started = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    try:
        for event in events:
            if stop.is_set():
                break
            fut = await producer.send(topic, orjson.dumps(event), key=str(event["user_id"]).encode())
            pending.append(fut)
            sent += 1
            if len(pending) >= 1000:
                await _settle(pending, ledger)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await _settle(pending, ledger)
                    await asyncio.sleep(ahead)
        await _settle(pending, ledger)
    finally:
        await producer.stop()
    return sent


async def _settle(pending: list[asyncio.Future[object]], ledger: Ledger) -> None:
    for meta in await asyncio.gather(*pending):
        ledger.add_input((meta.topic, meta.partition, meta.offset), meta.timestamp)  # type: ignore[attr-defined]
    pending.clear()


async def follow_outputs(topology: Topology, ledger: Ledger, stop: asyncio.Event) -> None:
    """Tail the output and dead-letter topics into the ledger."""
    sink = topology.sink
    consumer = AIOKafkaConsumer(
        bootstrap_servers=topology.broker.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in (sink.topic, sink.dead_letter_topic)
            for p in range(INPUT_PARTITIONS)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for tp, records in batch.items():
                for rec in records:
                    if tp.topic == sink.topic:
                        ledger.add_recommendation(rec.value or b"", rec.timestamp)
                    else:
                        ledger.add_dead_letter(list(rec.headers), rec.timestamp)
    finally:
        await consumer.stop()


async def run_dev(opts: DevOptions, stack: EmbeddedStack) -> dict[str, object]:
    overrides = {
        "PIPELINE_BOOTSTRAP_SERVERS": stack.broker.bootstrap,
        "PIPELINE_TRITON_URL": stack.triton.grpc_url,
    }
    topology = load_topology(opts.topology, env=overrides)
    await ensure_topics(
        topology.broker.bootstrap_servers,
        [*topology.source.topics, topology.sink.topic, topology.sink.dead_letter_topic],
        INPUT_PARTITIONS,
    )
    stop = asyncio.Event()  # the user's (signal) or the run's end: stop feeding
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime = PipelineRuntime(topology)
    pipeline_stop, follow_stop = asyncio.Event(), asyncio.Event()
    pipeline_task = asyncio.create_task(runtime.run(pipeline_stop))
    ledger = Ledger()
    follower = asyncio.create_task(follow_outputs(topology, ledger, follow_stop))
    await asyncio.wait_for(runtime.ready.wait(), 60)
    started = time.monotonic()
    rate = opts.rate if opts.events is not None or opts.rate > 0 else 200.0
    events = live_events(GeneratorConfig(seed=int(time.time())), opts.events)
    feeder = asyncio.create_task(feed(topology, events, ledger, rate, stop))
    try:
        await _watch(opts, ledger, feeder, pipeline_task, stop, started)
    finally:
        # Stop in dataflow order so that what is in flight still gets counted.
        stop.set()
        await _settle_task(feeder)
        pipeline_stop.set()
        await _settle_task(pipeline_task, timeout_s=topology.source.drain_timeout_ms / 1000 + 30)
        deadline = time.monotonic() + 10
        while ledger.accounted() < len(ledger.inputs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        follow_stop.set()
        await _settle_task(follower)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    summary = ledger.summary()
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


async def _settle_task(task: asyncio.Task[object], timeout_s: float = 30.0) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(task, timeout_s)


async def _watch(
    opts: DevOptions,
    ledger: Ledger,
    feeder: asyncio.Task[int],
    pipeline_task: asyncio.Task[None],
    stop: asyncio.Event,
    started: float,
) -> None:
    last_report = started
    while not stop.is_set():
        await asyncio.sleep(0.1)
        if pipeline_task.done():
            pipeline_task.result()  # re-raises the pipeline's failure
            return
        if opts.events is not None and feeder.done() and ledger.accounted() >= opts.events:
            return
        if time.monotonic() - started > opts.timeout_s and opts.events is not None:
            log.error("timed out with %d of %d events accounted for", ledger.accounted(), opts.events)
            return
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            log.info(
                "in %d, recommendations %d, dead letters %d",
                len(ledger.inputs),
                ledger.recommendations,
                ledger.dead_letters,
            )


def main(opts: DevOptions) -> dict[str, object]:
    stack = EmbeddedStack.start(opts.workdir)
    try:
        return asyncio.run(run_dev(opts, stack))
    finally:
        stack.stop()
