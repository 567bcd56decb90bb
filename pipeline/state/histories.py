"""Each user's recent items for one input partition, on local disk: RocksDB through
rocksdict (the store Quix Streams uses), with a cache of the most recently active users in
front, bounded in bytes. Memory stays bounded whatever the number of users; the disk holds
them all.

A user's history is (ts, item) pairs packed 16 bytes a pair (``operators/coalesce.py``'s
format), keyed by the user id as 8 big-endian bytes. Beside it, under the same 8 bytes after
one prefix byte, the user's recommendation waiting for its outcome (opaque here:
``quality/online.py`` owns it): a key of another length, which every release's restore skips
unless it knows it, so a member of an earlier release reads the same changelog.

``extend`` merges new pairs as the in-memory history does (one timestamp per item, so a
replayed event changes nothing).
What changed is sent to the changelog (``take_changed``), then written to disk with the
changelog offset acknowledged for it (``stored``), so that a restart restores only what
came after that offset. ``apply_changelog`` is the restore's write. ``state/users.py`` owns
the stores of the partitions this member holds."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from rocksdict import DBCompressionType, Options, Rdict, WriteBatch, WriteOptions

from pipeline.operators.coalesce import RecentItems, merge_pairs, pack_pairs, unpack_pairs

_USER = struct.Struct(">q")
user_key = _USER.pack  # a user id as the store's (and the changelog's) key
_OFFSET = _USER  # the changelog offset: the same 8 big-endian bytes
CHANGELOG_OFFSET_KEY = b"\x00changelog-offset"  # sorts before every user key (ids are >= 0)
ABSENT_REMEMBERED = 4_096  # users found nowhere, remembered until the next put (bounded)
WRITE_BUFFER_BYTES = 16 << 20  # RocksDB's memtable: part of the store's memory besides the cache
WAITING_PREFIX = b"\x01"


def waiting_key(user_id: int) -> bytes:
    """Where a user's waiting recommendation is kept (in the store and the changelog)."""
    return WAITING_PREFIX + _USER.pack(user_id)


def history_of(blob: bytes) -> tuple[int, ...]:
    """A stored history's items, newest last."""
    return tuple(unpack_pairs(blob))


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
        self._dirty: dict[int, bytes] = {}  # user → packed pairs changed since the last take
        self._sending: dict[int, bytes] = {}  # taken for the changelog, not on disk yet
        self._waiting_dirty: dict[int, bytes] = {}  # the same for waiting recommendations
        self._waiting_sending: dict[int, bytes] = {}
        # Users just read and found nowhere: a new user is looked up twice in a row (the
        # outcome join, then the history), the disk only once.
        self._absent: set[int] = set()
        self.hits = 0
        self.misses = 0

    def _packed(self, user_id: int) -> bytes | None:
        blob = self._dirty.get(user_id) or self._sending.get(user_id) or self._cache.packed(user_id)
        if blob is not None:
            self.hits += 1
            return blob
        if user_id in self._absent:
            return None
        self.misses += 1
        blob = self._db.get(_USER.pack(user_id))
        if blob is not None:
            self._cache.put_packed(user_id, blob)
        else:
            if len(self._absent) >= ABSENT_REMEMBERED:
                self._absent.clear()
            self._absent.add(user_id)
        return blob

    def extend(self, user_id: int, new_items: list[tuple[int, int]]) -> tuple[int, ...]:
        """Add (ts, item) pairs; returns the history, newest last (as RecentItems.extend)."""
        blob = self._packed(user_id)
        if blob is None and len(new_items) == 1:  # a new user with one event: nothing to merge
            self.put_packed(user_id, pack_pairs(new_items))
            return (new_items[0][1],)
        known = unpack_pairs(blob) if blob is not None else {}
        kept = merge_pairs(known, new_items, self.history_length, self.by_event_time)
        self.put_packed(user_id, pack_pairs(kept))
        return tuple(item for _, item in kept)

    def history(self, user_id: int) -> tuple[int, ...]:
        """The stored history, newest last (pairs are packed in history order)."""
        blob = self._packed(user_id)
        return tuple(unpack_pairs(blob)) if blob is not None else ()

    def has_history(self, user_id: int) -> bool:
        return self._packed(user_id) is not None

    def waiting(self, user_id: int) -> bytes | None:
        """The user's recommendation waiting for its outcome, as ``set_waiting`` kept it
        (read from disk when not changed since: not cached, few users are recalled)."""
        kept = self._waiting_dirty.get(user_id) or self._waiting_sending.get(user_id)
        if kept is not None:
            return kept
        blob = self._db.get(waiting_key(user_id))
        return bytes(blob) if blob is not None else None

    def set_waiting(self, user_id: int, waiting: bytes) -> None:
        """Keep the user's waiting recommendation (the newest replaces it; empty: nothing
        waits): sent to the changelog and written to disk as histories are."""
        self._waiting_dirty[user_id] = waiting

    def put_packed(self, user_id: int, blob: bytes) -> None:
        """A user's value (``join_value``'s): an update, or a restore from the changelog."""
        self._absent.discard(user_id)
        self._cache.put_packed(user_id, blob)
        self._dirty[user_id] = blob

    def take_changed(self) -> dict[bytes, bytes]:
        """What is not on disk yet, to send to the changelog, by store key: what changed
        since the last take, and what an unfinished round took before it (sent again).
        Readable from here until ``stored`` wrote it to disk (the cache may drop it)."""
        self._sending = {**self._sending, **self._dirty} if self._sending else self._dirty
        self._waiting_sending = (
            {**self._waiting_sending, **self._waiting_dirty} if self._waiting_sending else self._waiting_dirty
        )
        self._dirty, self._waiting_dirty = {}, {}
        changed = {_USER.pack(user_id): blob for user_id, blob in self._sending.items()}
        for user_id, blob in self._waiting_sending.items():
            changed[waiting_key(user_id)] = blob
        return changed

    def stored(self, changelog_offset: int | None) -> int:
        """What was taken is on disk, with the changelog offset acknowledged for it; returns
        how many users' histories."""
        written = self._write(self._sending, self._waiting_sending, changelog_offset)
        self._sending, self._waiting_sending = {}, {}
        return written

    def flush(self, changelog_offset: int | None = None) -> int:
        """Everything not on disk yet, in one write; returns how many users' histories."""
        written = self._write(
            {**self._sending, **self._dirty},
            {**self._waiting_sending, **self._waiting_dirty},
            changelog_offset,
        )
        self._dirty, self._sending, self._waiting_dirty, self._waiting_sending = {}, {}, {}, {}
        return written

    def _write(
        self, histories: dict[int, bytes], waiting: dict[int, bytes], changelog_offset: int | None
    ) -> int:
        batch = WriteBatch(raw_mode=True)
        for user_id, blob in histories.items():
            batch.put(_USER.pack(user_id), blob)
        for user_id, blob in waiting.items():
            batch.put(waiting_key(user_id), blob)
        if changelog_offset is not None:
            batch.put(CHANGELOG_OFFSET_KEY, _OFFSET.pack(changelog_offset))
        if histories or waiting or changelog_offset is not None:
            self._db.write(batch)
        return len(histories)

    def apply_changelog(self, entries: list[tuple[bytes | None, bytes | None]], last_offset: int) -> None:
        """Changelog records (key, value), as read in a restore: written to disk as they are,
        with the offset reached. Histories (a user key) and waiting recommendations (its
        prefixed form); a record of another key is skipped (a later release's)."""
        self._absent.clear()  # what was found nowhere may be restored now
        batch = WriteBatch(raw_mode=True)
        for key, blob in entries:
            if key is None:
                continue
            history = len(key) == _USER.size
            if not history and not (len(key) == _USER.size + 1 and key[:1] == WAITING_PREFIX):
                continue
            if blob is None:  # a tombstone: dropped
                batch.delete(key)
            else:
                batch.put(key, blob)
            if history:
                self._cache.forget(_USER.unpack(key)[0])
        batch.put(CHANGELOG_OFFSET_KEY, _OFFSET.pack(last_offset))
        self._db.write(batch)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every user's (key, packed history) on disk, in key order (flush first)."""
        for key, blob in self._db.items():
            if isinstance(key, bytes) and len(key) == _USER.size:
                yield key, bytes(blob)

    def users_estimate(self) -> int:
        """RocksDB's estimate of the users on disk (cheap; not exact)."""
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def changelog_offset(self) -> int | None:
        """The changelog offset the stored state had reached at its last flush."""
        raw = self._db.get(CHANGELOG_OFFSET_KEY)
        return None if raw is None else int(_OFFSET.unpack(raw)[0])

    def resize_cache(self, max_bytes: int) -> None:
        self._cache.resize(max_bytes)

    @property
    def cache_bytes(self) -> int:
        return self._cache.bytes

    def sst_bytes(self) -> int:
        """RocksDB's own count of its files' bytes (cheap, safe during a compaction)."""
        return int(self._db.property_int_value("rocksdb.total-sst-files-size") or 0)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    @property
    def pending(self) -> int:
        """Users changed and not on disk yet."""
        return len(self._dirty) + len(self._sending) + len(self._waiting_dirty) + len(self._waiting_sending)

    def close(self) -> None:
        """What changed is written, RocksDB's memtable flushed to its files, then closed."""
        self.flush()
        self._db.flush()
        self._db.close()
