"""Helpers for tests on the real stack: a fresh topology per test, raw producing, and
running a pipeline until every input is accounted for."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from pipeline import kafka_clients
from pipeline.audit import Coord, Ledger, input_user
from pipeline.devstack.dev import follow_outputs
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import ensure_topology_topics, read_to_end
from pipeline.runtime import PipelineRuntime
from pipeline.topology.schema import Topology

ROOT = Path(__file__).resolve().parents[2]


def fresh_topology(stack: EmbeddedStack, **sections: dict[str, Any]) -> Topology:
    """The shipped recommender topology on fresh topics and a fresh group, with overrides."""
    return Topology.model_validate(topology_on_stack(stack, **sections))


async def create_topics(topology: Topology, partitions: int = 4) -> None:
    await ensure_topology_topics(topology, partitions)


RawIn = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers


async def produce_raw(topology: Topology, records: list[RawIn], ledger: Ledger) -> list[Coord]:
    producer = kafka_clients.producer(topology.broker, client_suffix="-test", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topology.source.topics[0], value, key=key, headers=headers)
            for key, value, headers in records
        ]
        coords = []
        for meta, (_, value, _) in zip(await asyncio.gather(*futures), records, strict=True):
            coord = (meta.topic, meta.partition, meta.offset)
            ledger.add_input(coord, meta.timestamp, input_user(value))
            coords.append(coord)
        return coords
    finally:
        await producer.stop()


@dataclass
class Run:
    topology: Topology
    ledger: Ledger = field(default_factory=Ledger)
    coords: list[Coord] = field(default_factory=list)
    runtime: PipelineRuntime | None = None


async def run_until_accounted(
    topology: Topology, records: list[RawIn], timeout_s: float = 60.0, tracer_provider: Any = None
) -> Run:
    """Start a pipeline, produce the records, wait until each is accounted for, stop."""
    await create_topics(topology)
    run = Run(topology)
    stop = asyncio.Event()
    run.runtime = PipelineRuntime(topology, tracer_provider=tracer_provider)
    pipeline_task = asyncio.create_task(run.runtime.run(stop))
    follower = asyncio.create_task(follow_outputs(topology, run.ledger, stop))
    try:
        await asyncio.wait_for(run.runtime.ready.wait(), 60)
        run.coords = await produce_raw(topology, records, run.ledger)
        deadline = time.monotonic() + timeout_s
        while run.ledger.accounted() < len(records) and time.monotonic() < deadline:
            if pipeline_task.done():
                pipeline_task.result()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(pipeline_task, 60)
        await asyncio.wait_for(follower, 30)
    return run


async def committed_offsets(topology: Topology, partitions: Iterable[int]) -> dict[int, int | None]:
    """The group's committed offset of each of these partitions of the input topic (None: none)."""
    topic = topology.source.topics[0]
    consumer = kafka_clients.consumer(
        topology.broker, client_suffix="-test", group_id=topology.source.group_id
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


def run_pipeline_command(*args: str | Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS...` as a user runs it, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def processes_mentioning(text: str) -> list[int]:
    """Processes (not this one) whose command line names ``text`` or whose working directory
    is under it: what a test that starts a stack in ``tmp_path`` may have left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text):
            found.append(int(entry.name))
    return found


async def read_values(topology: Topology, topic: str) -> list[Any]:
    return [rec async for rec in read_to_end(topology.broker, topic)]
