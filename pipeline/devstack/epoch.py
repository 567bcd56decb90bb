"""A broker epoch's books, shared by `pipeline dev` and the soak: fresh topics, a ledger, the
follower that fills it from the output and dead-letter topics, and a feeder of synthetic
events that can be paused (a broker recycle drains first) and started again. The embedded
broker's offsets restart with each fresh broker, so each epoch has a ledger of its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from aiokafka import TopicPartition

from pipeline import kafka_clients
from pipeline.audit import Ledger
from pipeline.devstack.tuning import EMBEDDED_BROKER, BrokerTuning
from pipeline.kafka_io import ensure_topology_topics, seek_to_start
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)
INPUT_PARTITIONS = 4
RECYCLE_DRAIN_S = 60.0  # for the events in flight to be answered before a broker restart
CLOSE_DRAIN_S = 10.0  # at an epoch's end, for the follower to read the last answers


@dataclass
class Books:
    """The ledgers of a run, one per broker epoch."""

    ledgers: list[Ledger] = field(default_factory=list)

    def new_epoch(self) -> Ledger:
        self.ledgers.append(Ledger())
        return self.ledgers[-1]

    def accounted(self) -> int:
        return sum(ledger.accounted() for ledger in self.ledgers)

    def inputs(self) -> int:
        return sum(len(ledger.inputs) for ledger in self.ledgers)


async def feed(
    topology: Topology,
    events: Iterator[dict[str, object]],
    ledger: Ledger,
    rate: float,
    stop: asyncio.Event,
    tuning: BrokerTuning = EMBEDDED_BROKER,
) -> int:
    """Produce ``events`` at ``rate`` per second (0: as fast as the producer goes). Sends are
    not awaited one by one: the producer lingers, so each partition gets few, large batches
    (the embedded broker's cost grows with the number of batches it stores)."""
    producer = kafka_clients.producer(topology.broker, client_suffix="-feed", linger_ms=tuning.linger_ms)
    await producer.start()
    topic = topology.source.topics[0]
    sent = 0
    started = last_settle = time.monotonic()
    pending: list[tuple[asyncio.Future[object], int]] = []
    try:
        for event in events:
            if stop.is_set():
                break
            fut = await producer.send(topic, orjson.dumps(event), key=str(event["user_id"]).encode())
            pending.append((fut, int(event["user_id"])))  # type: ignore[call-overload]
            sent += 1
            now = time.monotonic()
            if len(pending) >= 1000 or now - last_settle > 1.0:
                await _settle(pending, ledger)
                last_settle = time.monotonic()
            if rate > 0:
                ahead = sent / rate - (now - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await _settle(pending, ledger)
    finally:
        await producer.stop()
    return sent


async def _settle(pending: list[tuple[asyncio.Future[object], int]], ledger: Ledger) -> None:
    metas = await asyncio.gather(*(fut for fut, _ in pending))
    for meta, (_, user_id) in zip(metas, pending, strict=True):
        coord = (meta.topic, meta.partition, meta.offset)  # type: ignore[attr-defined]
        ledger.add_input(coord, meta.timestamp, user_id)  # type: ignore[attr-defined]
    pending.clear()


async def follow_outputs(
    topology: Topology, ledger: Ledger, stop: asyncio.Event, tuning: BrokerTuning = EMBEDDED_BROKER
) -> None:
    """Tail the output and dead-letter topics into the ledger."""
    sink = topology.sink
    consumer = kafka_clients.consumer(
        topology.broker,
        client_suffix="-follower",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=tuning.follower_fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in (sink.topic, sink.dead_letter_topic)
            for p in range(INPUT_PARTITIONS)
        ]
        consumer.assign(tps)
        seek_to_start(consumer, tps)
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


async def wait_accounted(ledger: Ledger, timeout_s: float) -> bool:
    """Until every input of ``ledger`` is answered (True), or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while ledger.accounted() < len(ledger.inputs):  # O(inputs): polled twice a second
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def settle_task(task: asyncio.Task[object], timeout_s: float = 30.0) -> None:
    """Wait for a task being stopped; its failure is logged (the run is ending anyway)."""
    try:
        await asyncio.wait_for(task, timeout_s)
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("%s ended with an error", task.get_name())


class Epoch:
    """One broker epoch: its topology's topics, its ledger in ``books``, the follower that
    fills the ledger and the feeder of ``events``. ``open`` creates the topics and starts the
    follower; the feeder starts with ``start_feeding``."""

    def __init__(
        self, topology: Topology, ledger: Ledger, events: Iterator[dict[str, object]], rate: float, name: str
    ) -> None:
        self.topology, self.ledger, self.events, self.rate, self.name = topology, ledger, events, rate, name
        self.feeder: asyncio.Task[int] | None = None
        self.follower: asyncio.Task[None] | None = None
        self._feed_stop = asyncio.Event()
        self._follow_stop = asyncio.Event()

    @classmethod
    async def open(
        cls,
        topology: Topology,
        books: Books,
        events: Iterator[dict[str, object]],
        rate: float,
        name: str = "",
    ) -> Epoch:
        await ensure_topology_topics(topology, INPUT_PARTITIONS)
        epoch = cls(topology, books.new_epoch(), events, rate, name)
        epoch.follower = asyncio.create_task(
            follow_outputs(topology, epoch.ledger, epoch._follow_stop), name=f"follower{name}"
        )
        return epoch

    def start_feeding(self) -> None:
        self._feed_stop = asyncio.Event()
        self.feeder = asyncio.create_task(
            feed(self.topology, self.events, self.ledger, self.rate, self._feed_stop),
            name=f"feeder{self.name}",
        )

    async def stop_feeding(self) -> None:
        """The feeder stopped, and what it sent acknowledged into the ledger."""
        self._feed_stop.set()
        if self.feeder is not None:
            await settle_task(self.feeder)

    @property
    def fed(self) -> bool:
        """The feeder ran out of events (or was stopped)."""
        return self.feeder is not None and self.feeder.done()

    async def drained(self, timeout_s: float) -> bool:
        """Stop feeding, then wait until every input is answered. The broker holds the only
        copy of what is unfinished: restart it only after True."""
        await self.stop_feeding()
        return await wait_accounted(self.ledger, timeout_s)

    async def close(self) -> None:
        """The feeder stopped, the last answers read, the follower stopped: call once whatever
        consumes the epoch's input has stopped, so that what it finished is counted."""
        await self.stop_feeding()
        await wait_accounted(self.ledger, CLOSE_DRAIN_S)
        self._follow_stop.set()
        if self.follower is not None:
            await settle_task(self.follower)

    def raise_failure(self, running_expected: bool = False) -> None:
        """The books are wrong without the feeder or the follower: re-raise the failure of
        either while it should run; with ``running_expected``, also fail on one that ended
        (an endless feed, a follower not yet stopped)."""
        for task, stopping in ((self.feeder, self._feed_stop), (self.follower, self._follow_stop)):
            if task is None or not task.done() or stopping.is_set():
                continue
            if not task.cancelled() and task.exception() is not None:
                task.result()
            if running_expected:
                raise RuntimeError(f"{task.get_name()} ended while it should run")
