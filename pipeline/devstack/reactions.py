"""Users who react to what they were recommended, for the dev stack (`pipeline dev
--reacting`).

The synthetic generator draws each user's next item whatever was recommended, so online
quality (hit@K of a recommendation against the user's next interaction) could not depend on
the model. Here each user's latest recommendation is remembered (from the output records
`pipeline dev` already reads), and the user's next generated event takes one of the
recommended items with probability ``max_share * fit``, ``fit`` being the share of those
items in the user's taste cluster: a model that knows the user's taste is followed, a random
one mostly is not. The item is drawn weighted toward the top ranks, in-cluster items first.
Otherwise, and for users without a recommendation, the event is the generator's.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.audit import Ledger
from pipeline.devstack.epoch import Books
from pipeline.recsys.generator import EventGenerator

log = logging.getLogger(__name__)

DEFAULT_SHARE = 0.6
REMEMBERED_USERS = 100_000
OUT_OF_CLUSTER_WEIGHT = 0.2  # an item outside the user's taste is picked this much less often


@dataclass(frozen=True)
class Shown:
    """A user's latest recommendation, ready to react to."""

    items: np.ndarray  # recommended item ids, best first
    cdf: np.ndarray  # cumulative pick weights of the items, ending at 1
    fit: float  # share of the items in the user's taste cluster
    model: str  # name:version that recommended them


class Reactions:
    """Remembers each user's latest recommendation (``max_users`` at most, the least
    recently recommended forgotten) and lets generated events react to it. The same seed and
    the same recommendations, in the same order among the events, give the same events."""

    def __init__(
        self,
        user_cluster: np.ndarray,
        item_cluster: np.ndarray,
        max_share: float = DEFAULT_SHARE,
        max_users: int = REMEMBERED_USERS,
        seed: int = 0,
    ) -> None:
        self.user_cluster = np.asarray(user_cluster)
        self.item_cluster = np.asarray(item_cluster)
        self.max_share = max_share
        self.max_users = max_users
        self._rng = np.random.default_rng(seed)
        self._latest: OrderedDict[int, Shown] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.by_model: dict[str, Counter[str]] = {}
        self._arm_of: OrderedDict[int, str] = OrderedDict()  # an experiment's: the arm a user saw
        self.users_in_two_arms: set[int] = set()

    @classmethod
    def of(cls, generator: EventGenerator, max_share: float = DEFAULT_SHARE, **kwargs: Any) -> Reactions:
        """For the events of ``generator``: its users' and items' clusters."""
        return cls(generator.user_cluster, generator.item_cluster, max_share, **kwargs)

    def __len__(self) -> int:
        return len(self._latest)

    def observe(self, record: bytes | Mapping[str, Any]) -> None:
        """One output record of the pipeline (its JSON or the parsed object). A record that
        is not a recommendation is counted and ignored: it must never stop the follower."""
        try:
            doc = orjson.loads(record) if isinstance(record, bytes | bytearray | memoryview) else record
            user = int(doc["user_id"])
            items = np.asarray([int(i["item_id"]) for i in doc["items"]], dtype=np.int64)
            model = doc.get("model") or {}
            name = f"{model.get('name', '?')}:{model.get('version', '?')}"
            if arm := model.get("arm"):
                name = f"{arm}/{name}"
                self._saw_arm(user, str(arm))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self.counts["unreadable_recommendations"] += 1
            return
        items = items[items >= 0]  # -1: fewer items than top-k
        if items.size == 0:
            return
        self._latest[user] = self._shown(user, items, name)
        self._latest.move_to_end(user)
        while len(self._latest) > self.max_users:
            self._latest.popitem(last=False)
        self.counts["recommendations"] += 1

    def _saw_arm(self, user: int, arm: str) -> None:
        """An experiment must show each user one arm only: a second one is counted."""
        if self._arm_of.setdefault(user, arm) != arm:
            self.users_in_two_arms.add(user)
        self._arm_of.move_to_end(user)
        while len(self._arm_of) > self.max_users:
            self._arm_of.popitem(last=False)

    def _shown(self, user: int, items: np.ndarray, model: str) -> Shown:
        known = (items >= 0) & (items < self.item_cluster.size)
        cluster = self.user_cluster[user] if 0 <= user < self.user_cluster.size else -1
        inside = known & (self.item_cluster[np.where(known, items, 0)] == cluster)
        # the top ranks first (1/rank, as attention falls down a list), in-cluster items first
        weights = np.where(inside, 1.0, OUT_OF_CLUSTER_WEIGHT) / np.arange(1, items.size + 1)
        cdf = np.cumsum(weights) / weights.sum()
        return Shown(items, cdf, float(inside.mean()), model)

    def react(self, events: Iterable[dict[str, object]]) -> Iterator[dict[str, object]]:
        """``events`` as generated, each maybe reacting to its user's latest recommendation."""
        for event in events:
            yield self.next_event(event)

    def next_event(self, event: dict[str, object]) -> dict[str, object]:
        self.counts["events"] += 1
        shown = self._latest.get(int(event["user_id"]))  # type: ignore[call-overload]
        if shown is None:
            return event  # no draw: the generator's event, and the same random stream
        tally = self.by_model.setdefault(shown.model, Counter())
        self.counts["with_recommendation"] += 1
        tally["with_recommendation"] += 1
        coin, pick = self._rng.random(2)  # always two draws: the stream does not depend on p
        if coin >= self.max_share * shown.fit:
            return event
        event["item_id"] = int(shown.items[min(int(np.searchsorted(shown.cdf, pick)), shown.items.size - 1)])
        self.counts["reacted"] += 1
        tally["reacted"] += 1
        return event

    def stats(self) -> dict[str, object]:
        """For `pipeline dev`'s summary: events that met a recommendation and took from it."""
        return {
            "max_share": self.max_share,
            **{k: self.counts[k] for k in ("events", "with_recommendation", "reacted", "recommendations")},
            "unreadable_recommendations": self.counts["unreadable_recommendations"],
            "users_remembered": len(self._latest),
            "by_model": {model: dict(tally) for model, tally in sorted(self.by_model.items())},
            "users_in_two_arms": len(self.users_in_two_arms),
        }


@dataclass
class ReactingLedger(Ledger):
    """A ledger that also hands each recommendation it counts to ``reactions``: the follower
    already reads the output topic, no second consumer is needed."""

    reactions: Reactions | None = field(default=None, kw_only=True)

    def add_recommendation(self, value: bytes, timestamp_ms: int) -> None:
        super().add_recommendation(value, timestamp_ms)
        if self.reactions is not None:
            self.reactions.observe(value)


@dataclass
class ReactingBooks(Books):
    """Books whose every epoch's ledger feeds ``reactions``."""

    reactions: Reactions | None = field(default=None, kw_only=True)

    def new_epoch(self) -> Ledger:
        self.ledgers.append(ReactingLedger(reactions=self.reactions))
        return self.ledgers[-1]
