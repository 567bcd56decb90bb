"""The faults of a round, each made on the running soak and ended with ``soak.mark_end()``
(its recovery is measured from there)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pipeline import kafka_clients
from pipeline.audit import Coord
from pipeline.devstack.epoch import INPUT_PARTITIONS
from pipeline.devstack.poison_producer import produce_undecodable
from pipeline.devstack.tuning import EMBEDDED_BROKER

from .records import Row, wall_ms

if TYPE_CHECKING:
    from .run import Soak

TRITON_DOWN_S = 10.0
STALL_S = 8.0  # SIGSTOP of Triton or the broker
WORKER_DOWN_S = 3.0  # a killed worker's replacement starts after this
JOIN_S = 20.0  # a third worker's stay

# Bad inputs: (key, value). The parse step dead-letters the malformed ones, the source the
# oversized one (max_event_bytes); the producer and the topic take 1.2 MB (as in the fault
# suite's test_oversized_input_and_oversized_output).
MALFORMED: tuple[tuple[bytes | None, bytes], ...] = (
    (b"1", b'{"user_id": 1, "item_id": 2, "type": "vi'),  # cut short
    (None, b"not json at all"),
    (b"2", b"\xff\xfe{}"),  # not even UTF-8
)
OVERSIZED = b"{" + b" " * 1_200_000 + b"}"
UNDECODABLE_PARTITIONS = 2  # one record with a non-UTF-8 header key in each of this many


async def triton_kill(soak: Soak, row: Row) -> None:
    triton = soak.stack.triton
    row.fault = f"Triton SIGKILL, restarted after {TRITON_DOWN_S:.0f} s"
    triton.kill()
    await soak.tick(TRITON_DOWN_S)
    await asyncio.to_thread(triton.start)
    soak.mark_end()
    await asyncio.to_thread(triton.wait_until, triton.ready, 180, "ready")
    row.notes.append(f"Triton ready {time.monotonic() - soak.fault_end:.1f} s after its restart")


async def triton_stop(soak: Soak, row: Row) -> None:
    # The server process only: stopping its Python-backend stub too makes the stub's
    # interprocess lock time out and the server abort on SIGCONT (the fault suite's note).
    triton = soak.stack.triton
    row.fault = f"Triton SIGSTOP {STALL_S:.0f} s"
    triton.signal(signal.SIGSTOP, group=False)
    try:
        await soak.tick(STALL_S)
    finally:
        triton.signal(signal.SIGCONT, group=False)
    soak.mark_end()


async def broker_stop(soak: Soak, row: Row) -> None:
    broker = soak.stack.broker
    row.fault = f"broker SIGSTOP {STALL_S:.0f} s"
    broker.signal(signal.SIGSTOP)
    try:
        await soak.tick(STALL_S)
    finally:
        broker.signal(signal.SIGCONT)
    soak.mark_end()


async def worker_kill(soak: Soak, row: Row) -> None:
    crew = soak.crew
    victim = soak.rng.choice(crew.workers)
    victim.sample(soak.now_s())
    crew.workers.remove(victim)
    victim.proc.kill()
    victim.finish(soak.now_s(), "SIGKILL (fault)")
    await soak.tick(WORKER_DOWN_S)
    soak.mark_end()
    replacement = await soak.start_worker("replacement")
    crew.workers.append(replacement)
    row.fault = f"worker {victim.name} SIGKILL, {replacement.name} after {WORKER_DOWN_S:.0f} s"
    row.notes.append(f"{replacement.name} ready {time.monotonic() - soak.fault_end:.1f} s after its start")


async def worker_join(soak: Soak, row: Row) -> None:
    joiner = await soak.start_worker("joiner")
    soak.crew.extra = joiner
    row.fault = f"worker {joiner.name} joins {JOIN_S:.0f} s, leaves (SIGTERM)"
    await soak.tick(JOIN_S)
    await soak.crew.stop(joiner, "SIGTERM (left)")
    soak.mark_end()
    row.notes.append(f"{joiner.name}: {joiner.end}")


async def bad_inputs(soak: Soak, row: Row) -> None:
    topology, ledger = soak.topology, soak.ledger
    topic = topology.source.topics[0]
    producer = kafka_clients.producer(
        topology.broker, linger_ms=EMBEDDED_BROKER.linger_ms, max_request_size=4_000_000
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key) for key, value in (*MALFORMED, (b"3", OVERSIZED))
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    coords: list[Coord] = []
    for meta in metas:
        coords.append((meta.topic, meta.partition, meta.offset))
        ledger.add_input(coords[-1], meta.timestamp)
    for partition in sorted(soak.rng.sample(range(INPUT_PARTITIONS), UNDECODABLE_PARTITIONS)):
        offsets = await asyncio.to_thread(
            produce_undecodable, topology.broker.bootstrap_servers, topic, partition, 1
        )
        for offset in offsets:
            coords.append((topic, partition, offset))
            ledger.add_input(coords[-1], wall_ms())
    soak.mark_end()
    row.fault = (
        f"bad inputs: {len(MALFORMED)} malformed, {UNDECODABLE_PARTITIONS} undecodable header key, "
        f"1 of {len(OVERSIZED) / 1e6:.1f} MB"
    )
    row.notes.append("at " + " ".join(f"[{p}]@{o}" for _, p, o in coords))


FAULTS: dict[str, Callable[[Soak, Row], Awaitable[None]]] = {
    "triton_kill": triton_kill,
    "triton_stop": triton_stop,
    "broker_stop": broker_stop,
    "worker_kill": worker_kill,
    "worker_join": worker_join,
    "bad_inputs": bad_inputs,
}
