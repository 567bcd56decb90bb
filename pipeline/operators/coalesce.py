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
    """Bounded memory of each user's last items (least recently active users forgotten)."""

    def __init__(self, history_length: int, max_users: int) -> None:
        self.history_length = history_length
        self.max_users = max_users
        self._items: OrderedDict[int, tuple[int, ...]] = OrderedDict()

    def extend(self, user_id: int, new_items: list[int]) -> tuple[int, ...]:
        merged = list(self._items.pop(user_id, ()))
        for item in new_items:
            if item in merged:
                merged.remove(item)
            merged.append(item)
        history = tuple(merged[-self.history_length :])
        if self.max_users > 0:
            self._items[user_id] = history
            while len(self._items) > self.max_users:
                self._items.popitem(last=False)
        return history


def coalesce_window(window: Window, recent: RecentItems) -> list[UserRequest]:
    by_user: dict[int, list[Event]] = {}
    for event in window.events:
        by_user.setdefault(event.user_id, []).append(event)
    requests = []
    for user_id, events in by_user.items():
        seen_ids: set[str] = set()
        items: list[int] = []
        for event in sorted(events, key=lambda e: e.ts):
            if event.event_id not in seen_ids:
                seen_ids.add(event.event_id)
                items.append(event.item_id)
        history = recent.extend(user_id, items)
        requests.append(UserRequest(user_id, history, tuple(events), len(events) - len(seen_ids)))
    return requests


def coalesce(
    history_length: int, remembered_users: int = 0
) -> Callable[[Observable[Window]], Observable[tuple[Window, list[UserRequest]]]]:
    """Operator: each window becomes (window, its per-user requests)."""
    recent = RecentItems(history_length, remembered_users)
    return ops.map(lambda w: (w, coalesce_window(w, recent)))
