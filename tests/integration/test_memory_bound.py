"""The memory formula against a measured worst case: a real `pipeline run` fed events of
nearly `max_event_bytes` while its answers are held back (Triton stalled behind a proxy that
stops passing bytes), so that the events in flight fill the bytes bound. Its peak RSS must
stay under `memory_budget(topology).limit`, and the bytes in flight must really reach the
bound (a formula that ignored the payload would then be caught)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import orjson

from pipeline import kafka_clients, procfs
from pipeline.devstack.dev import live_events
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.worker import PipelineProcess
from pipeline.recsys.generator import GeneratorConfig
from pipeline.sizing import MIB, memory_budget
from pipeline.topology.schema import Topology
from tests.integration.harness import fresh_topology

PARTITIONS = 4  # what ensure_topology_topics makes: all of them held by the one member
BOUND_BYTES = 48 * MIB  # the input topic's bytes bound: the payload dominates the margin
EVENT_BYTES = 60_000  # each event's value, just under max_event_bytes (65,536)
EVENTS = 1_200  # 72 MB: more than the bound and a poll
SAMPLE_S = 0.05
FILL_TIMEOUT_S = 15.0
HELD_S = 1.0  # sampled this long more once the bound is reached
IN_FLIGHT = re.compile(rb"^pipeline_in_flight_bytes (\S+)$", re.M)


class StallingProxy:
    """A TCP proxy in front of Triton's gRPC port that can stop passing bytes (connections
    kept open): to the pipeline, a Triton that stopped answering."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(1 << 16):
                await self.flowing.wait()  # stalled: this chunk waits, nothing more is read
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def large_events(count: int) -> list[bytes]:
    """Valid events padded with an extra field (the parser ignores unknown fields)."""
    values = []
    for event in live_events(GeneratorConfig(seed=26), count):
        bare = len(orjson.dumps({**event, "pad": ""}))
        values.append(orjson.dumps({**event, "pad": "x" * (EVENT_BYTES - bare)}))
    return values


async def produce(topology: Topology, values: list[bytes]) -> None:
    producer = kafka_clients.producer(topology.broker, client_suffix="-test", linger_ms=5)
    await producer.start()
    try:
        topic = topology.source.topics[0]
        sent = [
            await producer.send(topic, value, key=str(i % 500).encode()) for i, value in enumerate(values)
        ]
        await asyncio.wait_for(asyncio.gather(*sent), 30)
    finally:
        await producer.stop()


def in_flight_bytes(proc: PipelineProcess) -> float:
    found = IN_FLIGHT.search(proc.metrics().encode())
    return float(found.group(1)) if found else 0.0


async def test_peak_rss_with_large_events_in_flight_stays_under_the_formulas_limit(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    proxy = StallingProxy(int(stack.triton.grpc_url.rsplit(":", 1)[1]))
    url = await proxy.start()
    topology = fresh_topology(
        stack,
        source={
            "credits": {
                "high_watermark": 1_000,  # above the bytes bound's ~840 events: the bytes rule
                "low_watermark": 500,
                "high_watermark_bytes": BOUND_BYTES,
                "low_watermark_bytes": BOUND_BYTES // 2,
            },
            "drain_timeout_ms": 1_000,
        },
        model={"url": url, "timeout_ms": 60_000},
        deadline={"end_to_end_ms": 120_000},
        # caches this short run cannot fill are kept small, so the bound is close to the case
        window={"history_cache_mb": 1.0},
        outcomes={"memory_mb": 1.0},
    )
    budget = memory_budget(topology, partitions=PARTITIONS)
    payload = budget.term("in-flight payload").bytes
    without_payload = budget.total - payload - budget.term("outputs awaiting the broker").bytes
    proc = PipelineProcess(topology, tmp_path)
    try:
        await asyncio.to_thread(proc.start_ready)
        idle_mb = procfs.rss_mb(proc.pid) or 0.0
        proxy.flowing.clear()
        started = time.monotonic()
        producing = asyncio.create_task(produce(topology, large_events(EVENTS)))
        samples: list[float] = []
        reached = 0.0
        held_since: float | None = None
        while time.monotonic() - started < FILL_TIMEOUT_S:
            samples.append(procfs.rss_mb(proc.pid) or 0.0)
            reached = max(reached, await asyncio.to_thread(in_flight_bytes, proc))
            if held_since is None and reached >= BOUND_BYTES:
                held_since = time.monotonic()
            if held_since is not None and time.monotonic() - held_since >= HELD_S:
                break
            await asyncio.sleep(SAMPLE_S)
        await producing
        peak_mb = max(max(samples), procfs.peak_rss_mb(proc.pid) or 0.0)
        assert proc.alive()
    finally:
        proxy.flowing.set()
        await asyncio.to_thread(proc.stop)
        await proxy.close()
    print(
        f"\nidle {idle_mb:.1f} MiB, peak {peak_mb:.1f} MiB, in flight {reached / MIB:.1f} MiB; "
        f"bound {budget.total / MIB:.1f} MiB ({without_payload / MIB:.1f} without the payload), "
        f"limit {budget.limit / MIB:.0f} MiB"
    )
    # The bytes bound was reached (and held: overshot by one poll at most) ...
    assert BOUND_BYTES <= reached <= payload, (reached, payload)
    # ... the payload lives in memory ...
    assert peak_mb - idle_mb >= 0.8 * BOUND_BYTES / MIB, (idle_mb, peak_mb)
    # ... so that a formula without it would be under the peak; the formula's is above it.
    assert without_payload < peak_mb * MIB <= budget.total <= budget.limit, (
        without_payload / MIB,
        peak_mb,
        budget.total / MIB,
    )
