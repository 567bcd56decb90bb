"""Interactions for training, read as a stream into numpy arrays.

Sources: an event file (JSON lines or CSV, gzip or not, with an optional column mapping:
the replay tool's reader), a Kafka topic read to its end, or the synthetic generator. Rows
that do not make an interaction (ids that are not integers in the pipeline's 0..2^53-1, an
unknown event type, a timestamp that is not epoch ms) are skipped and counted by reason.

Memory: 8 + 8 + 8 + 1 bytes an interaction (user, item, ts, type), grown in chunks.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipeline.operators.parse import MAX_ID as PIPELINE_MAX_ID

TYPE_NAMES = ("view", "click", "purchase")
TYPE_CODES = {name: code for code, name in enumerate(TYPE_NAMES)}
# Ids the pipeline itself accepts (operators/parse.py: 0..2^53-1, what every JSON consumer
# reads exactly): a model trained on a larger id would recommend an item, or know a user,
# that the pipeline refuses (out_of_range).
MAX_ID = PIPELINE_MAX_ID
MAX_TS = (1 << 62) - 1
_CHUNK = 1 << 16


def _id(value: Any) -> int | None:
    """A non-negative integer id, else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


class InteractionLog:
    """Interactions as parallel numpy arrays (user, item, ts, type code), appended one at a
    time through a small buffer and grown in chunks."""

    def __init__(self) -> None:
        self.users = np.empty(0, dtype=np.int64)
        self.items = np.empty(0, dtype=np.int64)
        self.ts = np.empty(0, dtype=np.int64)
        self.kinds = np.empty(0, dtype=np.int8)
        self._size = 0
        self._buffer: list[tuple[int, int, int, int]] = []
        self.rows_read = 0
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        self._flush()
        return self._size

    def skip(self, reason: str) -> None:
        self.rows_read += 1
        self.skipped[reason] += 1

    def add(self, event: Mapping[str, Any] | None) -> bool:
        """One row: an event document of the pipeline's schema (None: skipped by the mapping)."""
        if event is None:
            self.skip("skipped by the mapping")
            return False
        user, item, kind, ts = (
            _id(event.get("user_id")),
            _id(event.get("item_id")),
            event.get("type"),
            event.get("ts"),
        )
        if user is None:
            self.skip("user_id is not a non-negative integer")
            return False
        if item is None:
            self.skip("item_id is not a non-negative integer")
            return False
        if user > MAX_ID or item > MAX_ID:
            name = "user_id" if user > MAX_ID else "item_id"
            self.skip(f"{name} is past 2^53 - 1 (the pipeline refuses it)")
            return False
        code = TYPE_CODES.get(kind) if isinstance(kind, str) else None
        if code is None:
            self.skip("type is not view, click or purchase")
            return False
        if not isinstance(ts, int) or isinstance(ts, bool) or abs(ts) > MAX_TS:
            self.skip("ts is not an integer (epoch ms)")
            return False
        self.rows_read += 1
        self._buffer.append((user, item, ts, code))
        if len(self._buffer) >= _CHUNK:
            self._flush()
        return True

    def add_arrays(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, kinds: np.ndarray) -> None:
        """Many valid interactions at once (tests, the generator)."""
        self._flush()
        self._append(
            np.asarray(users, np.int64), np.asarray(items, np.int64), np.asarray(ts, np.int64), kinds
        )
        self.rows_read += len(users)

    def _flush(self) -> None:
        if not self._buffer:
            return
        block = np.asarray(self._buffer, dtype=np.int64)
        self._buffer = []
        self._append(block[:, 0], block[:, 1], block[:, 2], block[:, 3])

    def _append(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, kinds: np.ndarray) -> None:
        n = len(users)
        need = self._size + n
        if need > len(self.users):
            capacity = max(need, int(len(self.users) * 1.5), _CHUNK)
            for name in ("users", "items", "ts", "kinds"):
                old = getattr(self, name)
                grown = np.empty(capacity, dtype=old.dtype)
                grown[: self._size] = old[: self._size]
                setattr(self, name, grown)
        self.users[self._size : need] = users
        self.items[self._size : need] = items
        self.ts[self._size : need] = ts
        self.kinds[self._size : need] = np.asarray(kinds, dtype=np.int8)
        self._size = need

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, ts, kinds), views of the filled part."""
        self._flush()
        n = self._size
        return self.users[:n], self.items[:n], self.ts[:n], self.kinds[:n]

    def summary(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "interactions": len(self),
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": dict(self.skipped.most_common()),
        }


def from_events(events: Iterable[Mapping[str, Any]], log: InteractionLog | None = None) -> InteractionLog:
    """Event dicts of the pipeline's schema (the generator's, a parsed JSON line)."""
    log = log or InteractionLog()
    for event in events:
        log.add(event)
    return log


def from_file(
    path: str | Path,
    mapping: str | Path | None = None,
    fmt: str | None = None,
    log: InteractionLog | None = None,
) -> InteractionLog:
    """An event file read as the replay tool reads it (the same column mapping)."""
    from pipeline.replay.files import EventFile
    from pipeline.replay.mapping import load_mapping

    log = log or InteractionLog()
    file = EventFile(path, load_mapping(mapping) if mapping else None, fmt)
    for number, doc in file.documents():
        if doc is None:
            log.skip("row is not a JSON object")
            continue
        log.add(file.mapper.event(doc, number))
    return log


def from_topic(topic: str, bootstrap: str, log: InteractionLog | None = None) -> InteractionLog:
    """Every record of a Kafka topic, read from its start to its current end."""
    from pipeline.kafka_io import broker_at, read_to_end
    from pipeline.replay.mapping import IDENTITY, Mapper

    log = log or InteractionLog()
    mapper = Mapper(IDENTITY, source_tag=topic)

    async def read() -> None:
        number = 0
        async for record in read_to_end(broker_at(bootstrap), topic):
            try:
                doc = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                log.skip("record is not JSON")  # the pipeline dead-letters these
                continue
            if not isinstance(doc, dict):
                log.skip("record is not a JSON object")
                continue
            log.add(mapper.event(doc, number))
            number += 1

    asyncio.run(read())
    return log


def from_synthetic(count: int, log: InteractionLog | None = None) -> tuple[InteractionLog, int]:
    """``count`` events of the synthetic generator, and its catalogue's item count."""
    from pipeline.recsys.generator import EventGenerator, GeneratorConfig

    config = GeneratorConfig()
    return from_events(EventGenerator(config).events(count), log), config.items
