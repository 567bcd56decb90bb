"""How right the answers are about users' histories, read from the topics alone: the share
of recommendations that name an item among the user's recent distinct items as the input
topic says they were (the shipped model never recommends an item it was sent as history, so
with histories intact this is 0), and the users whose last changelog record differs from
the history rebuilt from the input topic. Used by the fault suite and the soak."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import ids
from pipeline.events import RawRecord
from pipeline.operators.coalesce import RecentItems
from pipeline.state.histories import history_of, user_key


def interaction(record: RawRecord) -> dict[str, Any] | None:
    """An input record's event, when it has a user, an item and an integer time; else None.
    Its ids are the pipeline's own (pipeline/ids.py: a string id's hash), as parse gives them."""
    try:
        doc = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("ts"), int):
        return None
    user, item = ids.internal_or_none(doc.get("user_id")), ids.internal_or_none(doc.get("item_id"))
    if user is None or item is None:
        return None
    return {**doc, "user_id": user, "item_id": item}


@dataclass
class HistoryShare:
    naming: int = 0
    answered: int = 0
    by_group: dict[str, tuple[int, int]] = field(default_factory=dict)  # group → (naming, answered)

    @property
    def share(self) -> float:
        return self.naming / self.answered if self.answered else 0.0


def history_share(
    inputs: Iterable[RawRecord],
    recommendations: Iterable[dict[str, Any]],
    history_length: int,
    group_of: Any = None,
) -> HistoryShare:
    """Recommendations naming an item of the user's last ``history_length`` distinct items
    up to the newest input they answer (by event time, as the pipeline orders them).
    ``group_of(rec)``: a label to count by (a phase, an epoch), optional."""
    waiting: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for rec in recommendations:
        last = max(rec["sources"], key=lambda s: s["offset"])
        waiting.setdefault((last["topic"], last["partition"], last["offset"]), []).append(rec)
    by_partition: dict[tuple[str, int], list[RawRecord]] = {}
    for record in inputs:
        by_partition.setdefault((record.topic, record.partition), []).append(record)
    result = HistoryShare()
    counts: dict[str, list[int]] = {}
    histories = RecentItems(history_length, 2**62, True, 2**62)
    for records in by_partition.values():
        for record in sorted(records, key=lambda r: r.offset):
            doc = interaction(record)
            if doc is None:
                continue
            seen = histories.extend(doc["user_id"], [(doc["ts"], doc["item_id"])])
            for rec in waiting.pop((record.topic, record.partition, record.offset), ()):
                named = bool(set(seen) & {ids.internal_or_none(i["item_id"]) for i in rec["items"]})
                result.naming += named
                result.answered += 1
                if group_of is not None:
                    tally = counts.setdefault(str(group_of(rec)), [0, 0])
                    tally[0] += named
                    tally[1] += 1
    result.by_group = {group: (n, a) for group, (n, a) in counts.items()}
    return result


def changelog_mismatches(
    inputs: Iterable[RawRecord], changelog: Iterable[RawRecord], history_length: int
) -> list[int]:
    """Users whose last changelog record is not the history rebuilt from every input."""
    histories = RecentItems(history_length, 2**62, True, 2**62)
    for record in sorted(inputs, key=lambda r: (r.topic, r.partition, r.offset)):
        doc = interaction(record)
        if doc is not None:
            histories.extend(doc["user_id"], [(doc["ts"], doc["item_id"])])
    last = {rec.key: rec.value for rec in changelog if rec.key is not None}
    wrong = []
    for user in histories.users():
        stored = last.get(user_key(user))
        if stored is None or history_of(stored) != histories.history(user):
            wrong.append(user)
    return wrong
