"""At start, before anything is consumed or written: every topic the topology reads or writes
exists. A missing output or dead-letter topic would otherwise show only at the first write,
as a metadata wait and a retry for ever (aiokafka's UnknownTopicOrPartitionError is
retriable), the first dead letter pinning its partition's commit; so the process stops with
one line naming the topic (exit 2), as for other misconfigurations.

The broker's topics are listed (a Metadata request for all topics): asking for the topics by
name would create them on a broker that creates topics on first use (the embedded broker,
Tansu, does so on Metadata and on Produce), hiding the misconfiguration there. The state
changelog is not checked: the pipeline makes it (``state/changelog.py``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pipeline import kafka_clients
from pipeline.errors import Fatal
from pipeline.topology.schema import Broker, Topology

log = logging.getLogger(__name__)
LIST_TIMEOUT_S = 10.0  # one listing; a broker that does not answer is the clients' to wait out
MISSING_WAIT_S = 5.0  # a topic made at the same time as the start (a deploy job) may still come
RELIST_PAUSE_S = 1.0


class MissingTopics(Fatal, reason="missing_topics"):
    """A topic of the topology does not exist: no retry makes it."""

    exit_code = 2


async def broker_topics(broker: Broker) -> set[str]:
    admin = kafka_clients.admin(broker)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def topology_topics(t: Topology) -> dict[str, str]:
    """Topic → the key that names it: the inputs, the outputs, the dead letters, the joined
    examples."""
    named = {topic: f"source.topics[{i}]" for i, topic in enumerate(t.source.topics)}
    named[t.sink.topic] = "sink.topic"
    named[t.sink.dead_letter_topic] = "sink.dead_letter_topic"
    if t.outcomes.enabled and t.outcomes.examples_topic is not None:
        named[t.outcomes.examples_topic] = "outcomes.examples_topic"
    return named


async def check_topics(
    t: Topology,
    list_topics: Callable[[Broker], Awaitable[set[str]]] | None = None,
    wait_s: float | None = None,
) -> None:
    """MissingTopics naming each missing topic and its key once a listing within ``wait_s``
    still lacks it. A listing that fails or does not answer is logged and the start goes on
    (the broker away: the clients wait for it; a write to a topic missing then is reported by
    the sink)."""
    wanted = topology_topics(t)
    list_topics = list_topics or broker_topics
    deadline = time.monotonic() + (MISSING_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            have = await asyncio.wait_for(list_topics(t.broker), LIST_TIMEOUT_S)
        except Fatal:
            raise
        except Exception as exc:
            log.warning("could not list the broker's topics (%r): the topology's topics are not checked", exc)
            return
        missing = [f"{topic} ({key})" for topic, key in wanted.items() if topic not in have]
        if not missing:
            return
        if time.monotonic() >= deadline:
            where = t.broker.bootstrap_servers
            if len(missing) == 1:
                raise MissingTopics(f"topic {missing[0]} does not exist on {where}: create it first")
            raise MissingTopics(f"topics {', '.join(missing)} do not exist on {where}: create them first")
        await asyncio.sleep(RELIST_PAUSE_S)


async def check_broker(t: Topology) -> bool:
    """The connection check, waited for at most ``broker.start_timeout_ms``
    (``kafka_clients.wait_for_broker``: BrokerAway past it, CredentialsError at once), then
    the topics check. True: the broker answered."""
    await kafka_clients.wait_for_broker(t.broker, t.broker.start_timeout_ms / 1000)
    await check_topics(t)
    return True
