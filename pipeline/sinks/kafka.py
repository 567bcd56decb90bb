"""The Kafka sink: writes a SinkBatch and returns once the broker acknowledged every record.
A record the broker refused is re-sent with backoff (never dropped); the caller finishes the
source offsets only after ``write`` returns. At-least-once: the idempotent producer is off
(the embedded broker does not support it) and every output carries its source ids.

Each lane has a producer of its own: a producer sends a partition's records in order, so with
one producer a lane's outputs would queue behind a flooded lane's."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.events import OutputRecord, SinkBatch
from pipeline.topology.schema import Broker, Sink

log = logging.getLogger(__name__)
DEFAULT = ""  # the producer of dead letters from parsing and of single-lane topologies


class KafkaSink:
    def __init__(
        self, spec: Sink, broker: Broker, lanes: list[str] | None = None, max_backoff_s: float = 5.0
    ) -> None:
        self.max_backoff_s = max_backoff_s
        self.producers = {lane: self._producer(spec, broker) for lane in [DEFAULT, *(lanes or [])]}

    @staticmethod
    def _producer(spec: Sink, broker: Broker) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers,
            client_id=f"{broker.client_id}-sink",
            acks="all",
            enable_idempotence=False,
            linger_ms=spec.linger_ms,
            max_batch_size=1_048_576,
            compression_type=None if spec.compression == "none" else spec.compression,
            request_timeout_ms=30_000,
        )

    async def start(self) -> None:
        for producer in self.producers.values():
            await producer.start()

    async def _send_all(self, producer: AIOKafkaProducer, records: list[OutputRecord]) -> list[OutputRecord]:
        """Send, wait for every acknowledgement; return the records that failed."""
        futures = []
        failed: list[OutputRecord] = []
        for rec in records:
            try:
                futures.append(
                    await producer.send(rec.topic, rec.value, key=rec.key, headers=list(rec.headers))
                )
            except KafkaError as exc:
                log.warning("send to %s failed: %r", rec.topic, exc)
                failed.append(rec)
                futures.append(None)
        for rec, fut in zip(records, futures, strict=True):
            if fut is None:
                continue
            try:
                await fut
            except KafkaError as exc:
                log.warning("delivery to %s failed: %r", rec.topic, exc)
                failed.append(rec)
        return failed

    async def write(self, batch: SinkBatch) -> None:
        producer = self.producers.get(batch.lane) or self.producers[DEFAULT]
        pending = list(batch.records)
        backoff = 0.1
        while pending:
            pending = await self._send_all(producer, pending)
            if pending:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def stop(self) -> None:
        for producer in self.producers.values():
            await producer.stop()
