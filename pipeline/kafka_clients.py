"""The one way to build a Kafka client: every consumer, producer and admin client the project
makes gets its connection options (address, client id, TLS, SASL) from the topology's
broker section, and only its role's options from the caller."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.security import kafka_security
from pipeline.topology.schema import Broker


def connection(broker: Broker, client_suffix: str = "") -> dict[str, Any]:
    """Options every client of this cluster shares: address, client id, TLS and SASL."""
    return {
        "bootstrap_servers": broker.bootstrap_servers,
        "client_id": broker.client_id + client_suffix,
        **kafka_security(broker),
    }


def consumer(broker: Broker, *topics: str, client_suffix: str = "", **options: Any) -> AIOKafkaConsumer:
    """A consumer that commits only when told to (``enable_auto_commit`` is off unless given)."""
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topics, **connection(broker, client_suffix), **options)


def producer(broker: Broker, client_suffix: str = "", **options: Any) -> AIOKafkaProducer:
    """A producer without idempotence unless asked: the embedded broker fails InitProducerId,
    and delivery is at-least-once anyway (outputs name their sources for deduplication)."""
    options.setdefault("enable_idempotence", False)
    return AIOKafkaProducer(**connection(broker, client_suffix), **options)


def admin(broker: Broker) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(broker, "-admin"))
