"""Outcomes joined to recommendations in the stream: what ``quality/outcomes.py`` computes
from the topics afterwards, counted as the pipeline runs, per arm and model version.

A recommendation is shown at its newest input (event time). Its outcome is the user's
interactions after it, within ``attribution_ms``:

- **next item**: the first of them, a hit (at its rank) when it was recommended, else a miss;
- **any hit**: one of them named a recommended item;
- **no return**: the next interaction came after the window.

Both sides can come first: a user's next window is often coalesced before the answer to the
last one is back (a backfill runs many windows at once). So a recommendation is judged
when it is shown, from the user's history (which holds each recent item with its latest
time), and then by each later window's events, as they are seen. Either way the outcome is
decided by event time, so a replay of the same input counts the same outcomes.

Memory: the recommendations waiting for an outcome, at most ``max_users`` users (the least
recently active forgotten first) and ``PER_USER`` a user and arm; what is forgotten before
its outcome is counted (``pipeline_outcomes_dropped_total``)."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.events import BatchOutcome, Event, Recommendations, UserRequest, Window
from pipeline.metrics import Metrics

PER_USER = 8  # recommendations of one user and arm waiting for an outcome
MAX_ITEMS_COUNTED = 200_000  # distinct items counted per arm for coverage
NO_EXPERIMENT = "default"  # the arm label without an experiment

History = Callable[[int, int], dict[int, int]]  # (user, partition) → item → latest ts


@dataclass(slots=True)
class _Shown:
    at: int  # event time of its newest input
    items: tuple[int, ...]
    version: str
    judged: bool = False  # the next item is counted


def shown_at(row: UserRequest) -> int:
    events = row.events
    return events[0].ts if len(events) == 1 else max(e.ts for e in events)


class OnlineOutcomes:
    def __init__(
        self, attribution_ms: int, max_users: int, metrics: Metrics, history: History | None = None
    ) -> None:
        self.attribution_ms = attribution_ms
        self.max_users = max_users
        self.metrics = metrics
        self._history = history
        self._waiting: OrderedDict[int, dict[str, list[_Shown]]] = OrderedDict()  # user → arm → shown
        self._items: dict[str, set[int]] = {}
        self.pending = 0
        metrics.outcome_pending.set_function(lambda: self.pending)

    # ── the input side: every window's events, before they extend the histories ────────
    def seen(self, window: Window) -> None:
        waiting = self._waiting
        if not waiting:
            return
        mine: dict[int, list[Event]] = {}
        for event in window.events:
            if event.user_id in waiting:
                mine.setdefault(event.user_id, []).append(event)
        for user, events in mine.items():
            if len(events) > 1:
                events.sort(key=lambda e: e.ts)
            arms = waiting[user]
            waiting.move_to_end(user)
            for arm, shown in arms.items():
                for event in events:
                    self._judge(arm, shown, event.ts, event.item_id)
            self._tidy(user, arms)

    # ── the output side: every answered batch (live), every shadow answer ───────────────
    def answered(self, outcome: BatchOutcome) -> None:
        if outcome.answers:
            self.shown(outcome.arm or NO_EXPERIMENT, outcome.model_version, outcome.answers)

    def shadow_answered(
        self, arm: str, version: str, rows: Sequence[UserRequest], answers: Sequence[Recommendations]
    ) -> None:
        self.shown(arm, version, list(zip(rows, answers, strict=True)))

    def shown(self, arm: str, version: str, answers: Sequence[tuple[UserRequest, Recommendations]]) -> None:
        naming_history = 0
        items = self._items.setdefault(arm, set())
        for row, recs in answers:
            rec = _Shown(shown_at(row), recs.item_ids, version)
            if row.history and not set(row.history).isdisjoint(recs.item_ids):
                naming_history += 1
            if len(items) < MAX_ITEMS_COUNTED:
                items.update(recs.item_ids)
            self._keep(row, arm, rec)
        self.metrics.arm_recommendations.labels(arm, version).inc(len(answers))
        if naming_history:
            self.metrics.arm_naming_history.labels(arm, version).inc(naming_history)
        self.metrics.recommended_items.labels(arm).set(len(items))

    def _keep(self, row: UserRequest, arm: str, rec: _Shown) -> None:
        """Judged at once from the user's history for what came after it; kept if its
        outcome is still open."""
        user = row.user_id
        if self._history is not None:
            after = sorted(
                (ts, item)
                for item, ts in self._history(user, row.events[0].source.partition).items()
                if ts > rec.at
            )
            for ts, item in after:
                if self._judge_one(arm, rec, ts, item):
                    return  # decided
        arms = self._waiting.get(user)
        if arms is None:
            arms = self._waiting[user] = {}
            self._bound()
        else:
            self._waiting.move_to_end(user)
        shown = arms.setdefault(arm, [])
        shown.append(rec)
        self.pending += 1
        if len(shown) > PER_USER:
            self._forget(shown.pop(0))

    # ── judging ────────────────────────────────────────────────────────────────────────
    def _judge(self, arm: str, shown: list[_Shown], ts: int, item: int) -> None:
        decided = [rec for rec in shown if self._judge_one(arm, rec, ts, item)]
        for rec in decided:
            shown.remove(rec)
            self.pending -= 1

    def _judge_one(self, arm: str, rec: _Shown, ts: int, item: int) -> bool:
        """One later interaction of the user; True: the recommendation's outcome is decided."""
        if ts <= rec.at:
            return False  # before it was shown (or the same instant: not after it)
        m = self.metrics
        if ts > rec.at + self.attribution_ms:
            if not rec.judged:
                m.outcomes.labels(arm, rec.version, "no_return").inc()
            return True
        hit = item in rec.items
        if not rec.judged:
            rec.judged = True
            if hit:
                m.outcomes.labels(arm, rec.version, "hit").inc()
                m.outcome_hit_rank.labels(arm, rec.version).observe(rec.items.index(item) + 1)
            else:
                m.outcomes.labels(arm, rec.version, "miss").inc()
        if hit:
            m.outcome_any_hits.labels(arm, rec.version).inc()
        return hit

    def _forget(self, rec: _Shown) -> None:
        self.pending -= 1
        if not rec.judged:
            self.metrics.outcomes_dropped.inc()

    def _tidy(self, user: int, arms: dict[str, list[_Shown]]) -> None:
        for arm in [arm for arm, shown in arms.items() if not shown]:
            del arms[arm]
        if not arms:
            del self._waiting[user]

    def _bound(self) -> None:
        while len(self._waiting) > self.max_users:
            _, arms = self._waiting.popitem(last=False)
            for shown in arms.values():
                for rec in shown:
                    self._forget(rec)

    def counts(self) -> dict[tuple[str, str], Counter[str]]:
        """Outcomes so far by (arm, version): hit, miss, no_return (what the guard reads)."""
        out: dict[tuple[str, str], Counter[str]] = {}
        for family in self.metrics.outcomes.collect():
            for sample in family.samples:
                labels = sample.labels
                out.setdefault((labels["arm"], labels["version"]), Counter())[labels["outcome"]] = int(
                    sample.value
                )
        return out
