"""The input side of a run: the same events for every run, pre-loaded all at once or
produced at a steady rate, and the outputs read back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from pipeline import kafka_clients
from pipeline.audit import Coord
from pipeline.kafka_io import read_to_end
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.topology.schema import Broker

from .config import SAMPLE_S, now_ms
from .model import customer, sku
from .sampling import Sampler


class Events:
    """The same event content for every run: distinct users (user id = index), items and
    types as the generator draws them; ids and timestamps fresh per load. ``strings``: the
    same events in string ids (user ``cust-<index>``, item ``SKU-<item>``: model.py's)."""

    def __init__(self, count: int, strings: bool = False) -> None:
        drawn = EventGenerator(GeneratorConfig(seed=7)).events(count)
        self.rows: list[tuple[int | str, str]] = [
            (sku(int(e["item_id"])) if strings else int(e["item_id"]), str(e["type"]))  # type: ignore[call-overload]
            for e in drawn
        ]
        self.strings = strings

    def user(self, index: int) -> int | str:
        return customer(index) if self.strings else index

    def value(self, tag: str, index: int, ts: int) -> bytes:
        item, kind = self.rows[index % len(self.rows)]
        return orjson.dumps(
            {
                "event_id": f"{tag}-{index}",
                "user_id": self.user(index),
                "item_id": item,
                "type": kind,
                "ts": ts,
            }
        )

    def key(self, index: int) -> bytes:
        return str(self.user(index)).encode()


async def preload(broker: Broker, topic: str, events: Events, count: int) -> dict[Coord, int]:
    """``count`` events, all acknowledged; returns each one's produce timestamp by coordinate.
    Few, large batches (the embedded broker's fetch cost grows with the batches stored)."""
    producer = kafka_clients.producer(
        broker, client_suffix="-bench-load", linger_ms=50, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        ts = now_ms()
        futures = [
            await producer.send(topic, events.value(topic, i, ts), key=events.key(i)) for i in range(count)
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {(m.topic, m.partition, m.offset): m.timestamp for m in metas}


async def read_outputs(broker: Broker, topic: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    async for rec in read_to_end(broker, topic, idle_timeout_s=10):
        if rec.value:
            out.append((rec.timestamp_ms, orjson.loads(rec.value)))
    return out


async def paced(
    broker: Broker, topic: str, events: Events, rate: float, seconds: float, sampler: Sampler
) -> dict[Coord, int]:
    """Events at a steady ``rate`` for ``seconds`` (user ids from 1 on: the warm-up took 0),
    sampling CPU meanwhile; returns each one's produce timestamp by coordinate."""
    producer = kafka_clients.producer(broker, client_suffix="-bench-paced", linger_ms=5)
    await producer.start()

    async def sample() -> None:
        while True:
            sampler.sample()
            await asyncio.sleep(SAMPLE_S)

    sampling = asyncio.create_task(sample())
    try:
        futures, sent, started = [], 0, time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            sent += 1
            futures.append(
                await producer.send(topic, events.value(topic, sent, now_ms()), key=events.key(sent))
            )
            if sent % 10 == 0 and (ahead := sent / rate - elapsed) > 0:
                await asyncio.sleep(ahead)
        metas = await asyncio.gather(*futures)
    finally:
        sampling.cancel()
        await producer.stop()
    return {(m.topic, m.partition, m.offset): m.timestamp for m in metas}
