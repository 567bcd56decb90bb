"""coalesce: a window's events → one inference request per user.

A user's events in the window become one request: their recent distinct items (this
window's, after the ones remembered from earlier windows) as history. Every source event
stays attached for lineage and offset acknowledgement, duplicates included; a duplicate
event id adds nothing to the history."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from reactivex import Observable
from reactivex import operators as ops

from pipeline.events import Event, UserRequest, Window


class RecentItems:
    """Bounded memory of each user's last items (least recently active users forgotten).

    With ``by_event_time`` an out-of-order event takes its place in the history by its
    timestamp (a late view does not become the "newest" item); otherwise by arrival."""

    def __init__(self, history_length: int, max_users: int, by_event_time: bool = True) -> None:
        self.history_length = history_length
        self.max_users = max_users
        self.by_event_time = by_event_time
        self._items: OrderedDict[int, tuple[tuple[int, int], ...]] = OrderedDict()

    def extend(self, user_id: int, new_items: list[tuple[int, int]]) -> tuple[int, ...]:
        """Add (ts, item) pairs; returns the history, newest last."""
        merged: dict[int, int] = {item: ts for ts, item in self._items.pop(user_id, ())}
        for ts, item in new_items:
            if self.by_event_time:
                merged[item] = max(ts, merged.get(item, ts))
            else:
                merged.pop(item, None)  # re-inserted last: arrival order
                merged[item] = ts
        pairs = [(ts, item) for item, ts in merged.items()]
        if self.by_event_time:
            pairs.sort()
        kept = tuple(pairs[-self.history_length :])
        if self.max_users > 0:
            self._items[user_id] = kept
            while len(self._items) > self.max_users:
                self._items.popitem(last=False)
        return tuple(item for _, item in kept)


def coalesce_window(window: Window, recent: RecentItems) -> list[UserRequest]:
    by_user: dict[int, list[Event]] = {}
    for event in window.events:
        by_user.setdefault(event.user_id, []).append(event)
    requests = []
    for user_id, events in by_user.items():
        seen_ids: set[str] = set()
        items: list[tuple[int, int]] = []
        ordered = sorted(events, key=lambda e: e.ts) if recent.by_event_time else events
        for event in ordered:
            if event.event_id not in seen_ids:
                seen_ids.add(event.event_id)
                items.append((event.ts, event.item_id))
        history = recent.extend(user_id, items)
        requests.append(UserRequest(user_id, history, tuple(events), len(events) - len(seen_ids)))
    return requests


def coalesce(
    history_length: int, remembered_users: int = 0, by_event_time: bool = True
) -> Callable[[Observable[Window]], Observable[tuple[Window, list[UserRequest]]]]:
    """Operator: each window becomes (window, its per-user requests)."""
    recent = RecentItems(history_length, remembered_users, by_event_time)
    return ops.map(lambda w: (w, coalesce_window(w, recent)))
