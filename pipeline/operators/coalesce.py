"""coalesce: a window's events → one inference request per user.

A user's events in the window become one request: their recent distinct items (this
window's, after the ones remembered from earlier windows) as history. Every source event
stays attached for lineage and offset acknowledgement, duplicates included; a duplicate
event id adds nothing to the history."""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from itertools import chain
from typing import Protocol

from reactivex import Observable
from reactivex import operators as ops

from pipeline.events import Event, UserRequest, Window

# What one remembered user costs beyond its packed pairs (the ordered dict's entry and
# link, the key, the bytes object's header): an estimate that errs high, which
# tests/operators/test_coalesce.py checks with tracemalloc.
ENTRY_OVERHEAD_BYTES = 200


_PAIR = struct.Struct("2q")


def pack_pairs(pairs: list[tuple[int, int]]) -> bytes:
    """(ts, item) pairs, 16 bytes each."""
    if len(pairs) == 1:  # a user's first event: most of them, so no format string to build
        return _PAIR.pack(*pairs[0])
    return struct.pack(f"{2 * len(pairs)}q", *chain.from_iterable(pairs))


def unpack_pairs(blob: bytes) -> dict[int, int]:
    """item → ts, in the order they were packed."""
    flat = memoryview(blob).cast("q")
    return dict(zip(flat[1::2], flat[0::2], strict=True))


def merge_pairs(
    known: dict[int, int], new_items: list[tuple[int, int]], history_length: int, by_event_time: bool
) -> list[tuple[int, int]]:
    """A history (item → ts) with new (ts, item) pairs: one timestamp per item (the latest),
    so a replayed event changes nothing; the newest ``history_length`` pairs, oldest first."""
    for ts, item in new_items:
        if by_event_time:
            known[item] = max(ts, known.get(item, ts))
        else:
            known.pop(item, None)  # re-inserted last: arrival order
            known[item] = ts
    pairs = [(ts, item) for item, ts in known.items()]
    if by_event_time:
        pairs.sort()
    return pairs[-history_length:]


class RecentItems:
    """Bounded memory of each user's last items (least recently active users forgotten
    first), within ``max_users`` and ``max_bytes``. A user's (ts, item) pairs are kept
    packed, 16 bytes a pair: about 430 bytes a user at 16 items, against 2.2 kB as tuples.

    With ``by_event_time`` an out-of-order event takes its place in the history by its
    timestamp (a late view does not become the "newest" item); otherwise by arrival."""

    def __init__(
        self, history_length: int, max_users: int, by_event_time: bool = True, max_bytes: int = 64 << 20
    ) -> None:
        self.history_length = history_length
        self.max_users = max_users
        self.max_bytes = max_bytes
        self.by_event_time = by_event_time
        self.bytes = 0  # the estimate kept within max_bytes
        self._items: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def users(self) -> list[int]:
        return list(self._items)

    def history(self, user_id: int) -> tuple[int, ...]:
        """The user's items, newest last, as remembered (not counted as activity)."""
        blob = self._items.get(user_id)
        return tuple(unpack_pairs(blob)) if blob is not None else ()

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bound()

    def forget(self, user_id: int) -> None:
        self._pop(user_id)

    def _forget(self, user_id: int) -> dict[int, int]:
        blob = self._pop(user_id)
        return unpack_pairs(blob) if blob is not None else {}

    def _pop(self, user_id: int) -> bytes | None:
        blob = self._items.pop(user_id, None)
        if blob is not None:
            self.bytes -= len(blob) + ENTRY_OVERHEAD_BYTES
        return blob

    def _remember(self, user_id: int, pairs: list[tuple[int, int]]) -> None:
        blob = pack_pairs(pairs)
        self._items[user_id] = blob
        self.bytes += len(blob) + ENTRY_OVERHEAD_BYTES
        self._bound()

    def _bound(self) -> None:
        while self._items and (len(self._items) > self.max_users or self.bytes > self.max_bytes):
            _, oldest = self._items.popitem(last=False)
            self.bytes -= len(oldest) + ENTRY_OVERHEAD_BYTES

    def extend(self, user_id: int, new_items: list[tuple[int, int]], partition: int = 0) -> tuple[int, ...]:
        """Add (ts, item) pairs; returns the history, newest last. One memory for every
        partition."""
        if len(new_items) == 1 and user_id not in self._items:  # a new user with one event: most of them
            if self.max_users > 0:
                self._remember(user_id, new_items)
            return (new_items[0][1],)
        kept = merge_pairs(self._forget(user_id), new_items, self.history_length, self.by_event_time)
        if self.max_users > 0:
            self._remember(user_id, kept)
        return tuple(item for _, item in kept)

    def packed(self, user_id: int) -> bytes | None:
        """A user's packed pairs, as remembered (None: not remembered); counts as activity."""
        blob = self._items.get(user_id)
        if blob is not None:
            self._items.move_to_end(user_id)
        return blob

    def put_packed(self, user_id: int, blob: bytes) -> None:
        """Remember a user's packed value as it is (a store's read, a restore): opaque here
        (a store's value may carry more than the pairs)."""
        self._pop(user_id)
        self._items[user_id] = blob
        self.bytes += len(blob) + ENTRY_OVERHEAD_BYTES
        self._bound()


class Histories(Protocol):
    """Where users' histories live: ``RecentItems`` in memory, or ``state.users.UserState``
    (a store per partition)."""

    by_event_time: bool

    def extend(self, user_id: int, new_items: list[tuple[int, int]], partition: int) -> tuple[int, ...]: ...


def coalesce_window(window: Window, recent: Histories) -> list[UserRequest]:
    by_user: dict[int, list[Event]] = {}
    for event in window.events:
        by_user.setdefault(event.user_id, []).append(event)
    requests = []
    for user_id, events in by_user.items():
        if len(events) == 1:  # one event: no duplicate, no order to restore
            event = events[0]
            history = recent.extend(user_id, [(event.ts, event.item_id)], event.source.partition)
            requests.append(UserRequest(user_id, history, (event,), 0))
            continue
        seen_ids: set[str] = set()
        items: list[tuple[int, int]] = []
        ordered = sorted(events, key=lambda e: e.ts) if recent.by_event_time else events
        for event in ordered:
            if event.event_id not in seen_ids:
                seen_ids.add(event.event_id)
                items.append((event.ts, event.item_id))
        history = recent.extend(user_id, items, events[0].source.partition)  # a user's key: one partition
        requests.append(UserRequest(user_id, history, tuple(events), len(events) - len(seen_ids)))
    return requests


def coalesce(
    histories: Histories,
) -> Callable[[Observable[Window]], Observable[tuple[Window, list[UserRequest]]]]:
    """Operator: each window becomes (window, its per-user requests)."""
    return ops.map(lambda w: (w, coalesce_window(w, histories)))
