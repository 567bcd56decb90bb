"""Warm start: users' histories built from past events (a file, as `pipeline replay` reads
them) and written to a topology's changelog topic, so that a new deployment's members
restore them on their first assignment instead of starting every user cold.

What the changelog already holds is read first and merged with (a rebuild adds to the
histories; it never drops what live traffic wrote), partition by partition, each in a
temporary store on disk: memory stays bounded whatever the number of users. A user's
partition is the one Kafka's default partitioner gives their key (the user id), as for
the input. Run it while the topology's group is stopped: a member running meanwhile would
overwrite a user's built history with its own at its next change of that user."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import ids, kafka_clients
from pipeline.replay.files import EventFile
from pipeline.sinks.partitioner import partitions_for
from pipeline.state.changelog import KafkaChangelog
from pipeline.state.histories import HistoryStore
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)
SEND_BATCH = 5_000  # records awaited together
BUILD_CACHE_BYTES = 32 << 20  # per temporary store


def _events(file: EventFile) -> Iterator[tuple[bytes, int, int, int] | None]:
    """(user's key, user, item, ts) of each row, ids as the pipeline's parse gives them
    (pipeline/ids.py); None for a row that is not a valid event."""
    for number, doc in file.documents():
        event = file.mapper.event(doc, number) if doc is not None and file.mapping is not None else doc
        try:
            assert event is not None
            raw_user, ts = event["user_id"], event["ts"]
            user, item = ids.internal_or_none(raw_user), ids.internal_or_none(event["item_id"])
            if user is None or item is None or not isinstance(raw_user, int | str):
                raise ValueError
            if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
                raise ValueError
            yield ids.key_text(raw_user), user, item, ts
        except (AssertionError, KeyError, TypeError, ValueError):
            yield None


async def _partition_count(topology: Topology, changelog: KafkaChangelog) -> int:
    await changelog.prepare(topology.source.topics)  # made if missing; counts checked
    return (await changelog.partition_counts([changelog.topic]))[changelog.topic]


async def build_state(topology: Topology, file: EventFile, workdir: Path | None = None) -> dict[str, Any]:
    """Histories of every user in ``file`` merged into the changelog; a summary."""
    t, w = topology, topology.window
    changelog = KafkaChangelog(t.broker, t.changelog_topic, t.state.changelog_replication_factor)
    partitions = await _partition_count(t, changelog)
    every = list(range(partitions))
    with tempfile.TemporaryDirectory(dir=workdir, prefix="state-build-") as scratch:
        stores = [
            HistoryStore(
                Path(scratch) / f"p{p}", w.history_length, w.history_order == "event_time", BUILD_CACHE_BYTES
            )
            for p in every
        ]
        try:
            existing = 0
            for p, store in enumerate(stores):  # what live traffic wrote is kept
                async for entries, _ in changelog.read(p, 0, t.state.restore_stall_ms / 1000.0):
                    store.apply_changelog([(e.key, e.value) for e in entries], entries[-1].offset)
                    existing += len(entries)
            rows = skipped = 0
            for event in _events(file):
                rows += 1
                if event is None:
                    skipped += 1
                    continue
                key, user, item, ts = event
                (p,) = partitions_for([key], every, every)  # the replay's key: the id's text
                stores[p].extend(user, [(ts, item)])
                if rows % 100_000 == 0:
                    for store in stores:
                        store.flush()
            users = await _send(t, changelog.topic, stores)
        finally:
            for store in stores:
                store.close()
    return {
        "rows": rows,
        "skipped": skipped,
        "changelog_records_read": existing,
        "users_written": users,
        "changelog": changelog.topic,
        "partitions": partitions,
    }


async def _send(topology: Topology, topic: str, stores: list[HistoryStore]) -> int:
    producer = kafka_clients.producer(
        topology.broker, client_suffix="-state-build", acks="all", linger_ms=50, max_batch_size=1 << 20
    )
    await producer.start()
    sent = 0
    try:
        pending = []
        for p, store in enumerate(stores):
            store.flush()
            for key, blob in store.items():
                pending.append(await producer.send(topic, blob, key=key, partition=p))
                sent += 1
                if len(pending) >= SEND_BATCH:
                    for fut in pending:
                        await fut
                    pending = []
        for fut in pending:
            await fut
    finally:
        await producer.stop()
    return sent
