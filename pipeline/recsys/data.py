"""Interactions for training, read as a stream into numpy arrays.

Sources: an event file (JSON lines or CSV, gzip or not, with an optional column mapping:
the replay tool's reader), a Kafka topic read to its end, or the synthetic generator. Rows
that do not make an interaction (ids the pipeline refuses, an unknown event type, a
timestamp that is not epoch ms) are skipped and counted by reason.

Ids are the pipeline's (pipeline/ids.py): an integer, or a string kept as its stable 63-bit
hash; each string item's text is kept once (the catalogue answers with it), users' are not.

Memory: 8 + 8 + 8 + 1 bytes an interaction (user, item, ts, type), grown in chunks, and a
dictionary entry per distinct string item.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipeline import ids

TYPE_NAMES = ("view", "click", "purchase")
TYPE_CODES = {name: code for code, name in enumerate(TYPE_NAMES)}
MAX_TS = (1 << 62) - 1
_CHUNK = 1 << 16
NOT_AN_ID = "{} is not an id (an integer in 0..2^53-1, or a string of 1..256 characters)"


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
        self.item_texts: dict[int, str] = {}  # a string item's internal id → its text
        self.collisions = 0  # rows whose string item shares its hash with another string

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
        raw_item = event.get("item_id")
        user, item, kind, ts = (
            ids.internal_or_none(event.get("user_id")),
            ids.internal_or_none(raw_item),
            event.get("type"),
            event.get("ts"),
        )
        if user is None:
            self.skip(NOT_AN_ID.format("user_id"))
            return False
        if item is None:
            self.skip(NOT_AN_ID.format("item_id"))
            return False
        if item >= ids.STRING_BASE and not self._item_text(item, str(raw_item)):
            self.skip("item_id shares its 63-bit hash with another item's (pipeline/ids.py)")
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

    def _item_text(self, item: int, text: str) -> bool:
        """Keeps a string item's text; False when another text has its hash (a collision)."""
        kept = self.item_texts.setdefault(item, text)
        if kept != text:
            self.collisions += 1
            return False
        return True

    def item_keys(self, item_ids: np.ndarray) -> np.ndarray | None:
        """Each item's own id as JSON text (``18``, ``"SKU-00018"``), aligned with
        ``item_ids``; None when every item is an integer (the ids are themselves)."""
        if not self.item_texts:
            return None
        texts = self.item_texts
        return np.asarray([orjson.dumps(texts.get(i, i)).decode() for i in item_ids.tolist()], dtype=np.str_)

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
            "string_items": len(self.item_texts),
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
