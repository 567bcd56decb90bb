"""Each user's recent items for one input partition, on local disk: RocksDB through
rocksdict (the store Quix Streams uses), with a cache of the most recently active users in
front, bounded in bytes. Memory stays bounded whatever the number of users; the disk holds
them all.

A user's history is (ts, item) pairs packed 16 bytes a pair (``operators/coalesce.py``'s
format), keyed by the user id as 8 big-endian bytes. ``extend`` merges new pairs as the
in-memory history does (one timestamp per item, so a replayed event changes nothing);
``flush`` writes what changed since the last flush in one batch, with the offset of the
changelog the partition's state has reached, so that a restart restores only what came
after it.

Not wired into the pipeline yet (issue 23): the partitions' owner will open a store on
assignment, flush it before each commit, and close it on release."""

from __future__ import annotations

import struct
from pathlib import Path

from rocksdict import DBCompressionType, Options, Rdict, WriteBatch, WriteOptions

from pipeline.operators.coalesce import RecentItems, merge_pairs, pack_pairs, unpack_pairs

_USER = struct.Struct(">q")
_OFFSET = struct.Struct(">q")
CHANGELOG_OFFSET_KEY = b"\x00changelog-offset"  # sorts before every user key (ids are >= 0)
WRITE_BUFFER_BYTES = 16 << 20  # RocksDB's memtable: part of the store's memory besides the cache


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    return options


class HistoryStore:
    def __init__(self, path: Path, history_length: int, by_event_time: bool, cache_bytes: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.history_length = history_length
        self.by_event_time = by_event_time
        self._db = Rdict(str(path), options=_options())
        # The changelog restores what the local disk lost: the write-ahead log is not needed.
        no_wal = WriteOptions()
        no_wal.disable_wal = True  # type: ignore[method-assign,assignment]  # an attribute at run time
        self._db.set_write_options(no_wal)
        self._cache = RecentItems(history_length, 2**62, by_event_time, cache_bytes)
        self._dirty: dict[int, bytes] = {}  # user → packed pairs, written at the next flush
        self.hits = 0
        self.misses = 0

    def _packed(self, user_id: int) -> bytes | None:
        blob = self._dirty.get(user_id) or self._cache.packed(user_id)
        if blob is not None:
            self.hits += 1
            return blob
        self.misses += 1
        blob = self._db.get(_USER.pack(user_id))
        if blob is not None:
            self._cache.put_packed(user_id, blob)
        return blob

    def extend(self, user_id: int, new_items: list[tuple[int, int]]) -> tuple[int, ...]:
        """Add (ts, item) pairs; returns the history, newest last (as RecentItems.extend)."""
        blob = self._packed(user_id)
        known = unpack_pairs(blob) if blob is not None else {}
        kept = merge_pairs(known, new_items, self.history_length, self.by_event_time)
        self.put_packed(user_id, pack_pairs(kept))
        return tuple(item for _, item in kept)

    def history(self, user_id: int) -> tuple[int, ...]:
        """The stored history, newest last (pairs are packed in history order)."""
        blob = self._packed(user_id)
        return tuple(unpack_pairs(blob)) if blob is not None else ()

    def put_packed(self, user_id: int, blob: bytes) -> None:
        """A user's history as packed pairs (an update, or a restore from the changelog)."""
        self._cache.put_packed(user_id, blob)
        self._dirty[user_id] = blob

    def flush(self, changelog_offset: int | None = None) -> int:
        """Everything changed since the last flush, in one write; returns how many users."""
        batch = WriteBatch(raw_mode=True)
        for user_id, blob in self._dirty.items():
            batch.put(_USER.pack(user_id), blob)
        if changelog_offset is not None:
            batch.put(CHANGELOG_OFFSET_KEY, _OFFSET.pack(changelog_offset))
        written = len(self._dirty)
        if written or changelog_offset is not None:
            self._db.write(batch)
        self._dirty.clear()
        return written

    def changelog_offset(self) -> int | None:
        """The changelog offset the stored state had reached at its last flush."""
        raw = self._db.get(CHANGELOG_OFFSET_KEY)
        return None if raw is None else int(_OFFSET.unpack(raw)[0])

    @property
    def cache_bytes(self) -> int:
        return self._cache.bytes

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def close(self) -> None:
        """What changed is written, RocksDB's memtable flushed to its files, then closed."""
        self.flush()
        self._db.flush()
        self._db.close()
