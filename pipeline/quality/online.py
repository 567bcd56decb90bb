"""Outcomes joined to recommendations in the stream: what ``quality/outcomes.py`` computes
from the topics afterwards, counted as the pipeline runs, per arm and model version.

A recommendation is shown at its newest input (event time). Its outcome is the user's
interactions after it, within ``attribution_ms``:

- **next item**: the first of them, a hit (at its rank) when it was recommended, else a miss;
- **any hit**: one of them named a recommended item;
- **no return**: the next interaction came after the window.

Both sides can come first: a user's next windows are often seen before the answer to the
last one is back (a backfill runs many windows at once). So while a user has a request out
their events are kept in a short log, and an answer is judged on the log first, then on
each later window's events as they are seen. Either way the outcome is decided by event
time alone (at one millisecond, by offset within the same topic-partition, as the report
orders them), so a replay of the same input counts the same outcomes whatever its pace.
What cannot be judged right is not judged: an answer older than events the log had to let
go, answers of partitions revoked meanwhile (their users are forgotten with them).

With ``examples_topic``, every decided next item is also a joined example (the
recommendation, the user's next interaction, the outcome: ``example_record``), handed to the
runtime to write with the batch that decided it.

With durable user state (``state.dir``), each user's latest live recommendation waiting for
its outcome is kept beside their history (``WaitingStore``: ``state/users.py``), so it
reaches the changelog and the partition's next owner: a user this process does not remember
(it restarted, the partition moved here, memory's bound let the user go) is recalled from
there and judged as if never forgotten. Once judged it is let go when the input that judged
it is written (``judged_inputs_written``: before that input is committed, with its joined
examples), unless the answer to that input replaced it first: a stop before that replays the
input, which judges it again; after it, the input is not replayed and nothing is recalled.
Shadow arms' recommendations are kept in memory only.

Memory: at most ``max_users`` users and ``max_bytes`` (estimated: the least recently active
forgotten first), each with at most ``LOG_EVENTS`` logged events and ``PER_USER``
recommendations an arm waiting, kept packed; what is forgotten before its outcome is
counted (``pipeline_outcomes_dropped_total``)."""

from __future__ import annotations

import struct
import zlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import orjson

from pipeline.events import BatchOutcome, Event, OutputRecord, RawRecord, Recommendations, UserRequest, Window
from pipeline.metrics import Metrics

PER_USER = 8  # recommendations of one user and arm waiting for an outcome
LOG_EVENTS = 64  # a user's events kept while an answer is out
MAX_ITEMS_COUNTED = 200_000  # distinct items counted per arm for coverage
NO_EXPERIMENT = "default"  # the arm label without an experiment
# What the bytes bound counts, estimates that err high (tests/unit/quality/test_online_join.py
# checks them with tracemalloc): a user's entry (the ordered dict's, the key, the record), a
# waiting recommendation beside its packed items, a logged event (an array's four int64).
USER_BYTES = 280
SHOWN_BYTES = 270
LOG_FIELDS = 4  # ts, item, topic, offset
LOGGED_BYTES = 8 * LOG_FIELDS
NEVER = -(2**63)
# A kept recommendation: layout, shown at (event time, offset, crc32 of its topic), then arm,
# model version and experiment (each a byte of length, then UTF-8), then the items (int64).
_KEPT_HEAD = struct.Struct("<BqqI")
KEPT_LAYOUT = 1
PASS_OVER = 64  # users with a request out passed over in one bounding at most


@dataclass(slots=True)
class _Shown:
    at: int  # event time of its newest input
    topic: int  # ... and where that input was: at one millisecond, a later offset there is after it
    offset: int
    items: array[int]  # the recommended items, best first, packed
    arm: str
    version: str
    judged: bool = False  # the next item is counted
    kept: bool = False  # in the user's durable state: not lost when memory lets it go

    @property
    def nbytes(self) -> int:
        return SHOWN_BYTES + 8 * len(self.items)


class _Kept(NamedTuple):
    at: int
    offset: int
    topic_crc: int
    arm: str
    version: str
    experiment: str
    items: array[int]


def _unpacked(blob: bytes) -> _Kept | None:
    """A kept recommendation, or None if it is not of this layout (the next replaces it)."""
    try:
        layout, at, offset, crc = _KEPT_HEAD.unpack_from(blob)
        if layout != KEPT_LAYOUT:
            return None
        cursor, names = _KEPT_HEAD.size, []
        for _ in range(3):
            size = blob[cursor]
            names.append(blob[cursor + 1 : cursor + 1 + size].decode())
            cursor += 1 + size
        rest = blob[cursor:]
        if len(rest) % 8:
            return None
        items = array("q")
        items.frombytes(rest)
    except (struct.error, IndexError, UnicodeDecodeError):
        return None
    return _Kept(at, offset, crc, names[0], names[1], names[2], items)


@dataclass(slots=True)
class _User:
    partition: int
    out: int = 0  # requests out (live, and shadow copies) whose answers will be judged
    log: array[int] | None = None  # (ts, item, topic, offset) seen while an answer was out
    cut: int = NEVER  # the newest event time the log let go of (bounded)
    shown: list[_Shown] | None = None  # waiting for an outcome, every arm's
    recalled: tuple[int, int, int, str] | None = None  # (at, topic, offset, arm): its answer again is a copy


class WaitingStore(Protocol):
    """Where a user's waiting recommendation is kept beside their history."""

    def waiting(self, user_id: int, partition: int) -> bytes | None: ...

    def set_waiting(self, user_id: int, partition: int, waiting: bytes) -> bool:
        """Keep it (an empty value: nothing kept); False: not kept."""


def newest(row: UserRequest) -> Event:
    """The input a recommendation is shown at: its newest by event time, then offset."""
    events = row.events
    return events[0] if len(events) == 1 else max(events, key=lambda e: (e.ts, e.source.offset))


def example_record(
    topic: str, user: int, rec: _Shown, outcome: str, ts: int, item: int, experiment: str | None
) -> OutputRecord:
    """A joined example: an interaction (the user's next one: ``pipeline train`` reads it as
    such) with the recommendation it followed and its outcome. Its id is the
    recommendation's, so a copy (a replay, a redelivery) is recognisably the same."""
    rank = rec.items.index(item) + 1 if outcome == "hit" else None
    value = {
        "event_id": f"outcome-{rec.arm}-{user}-{rec.at}",
        "user_id": user,
        "item_id": item,
        "type": "view",
        "ts": ts,
        "outcome": outcome,
        "rank": rank,
        "recommendation": {
            "shown_at_ms": rec.at,
            "items": rec.items.tolist(),
            "arm": rec.arm,
            "version": rec.version,
            "experiment": experiment,
        },
    }
    return OutputRecord(topic, str(user).encode(), orjson.dumps(value), ())


class OnlineOutcomes:
    def __init__(
        self,
        attribution_ms: int,
        max_users: int,
        metrics: Metrics,
        examples_topic: str | None = None,
        experiment: str | None = None,
        max_bytes: int = 32 << 20,
        is_current: Callable[[RawRecord], bool] | None = None,
        kept: WaitingStore | None = None,
    ) -> None:
        self.attribution_ms = attribution_ms
        self.max_users = max_users
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.examples_topic = examples_topic
        self.experiment = experiment
        self._examples: list[OutputRecord] = []  # decided, not yet handed to a batch
        self._users: OrderedDict[int, _User] = OrderedDict()
        self._items: dict[str, set[int]] = {}
        self._topics: dict[str, int] = {}  # name → index (a _Shown's topic)
        self._topic_crcs: list[int] = []  # index → crc32 of the name (what a kept one names)
        self._kept = kept
        # Kept recommendations judged, by the input that judged them (its id: the record is
        # held here too), let go once that input is written (bounded by what is in flight).
        self._judged_by: dict[int, tuple[RawRecord, list[tuple[int, int, int, int]]]] = {}
        self._is_current = is_current  # an answer of a revoked partition is not judged
        self.pending = 0
        self._dropped = 0  # forgotten unjudged since the last count
        self.bytes = 0  # the estimate kept within max_bytes
        metrics.outcome_pending.set_function(lambda: self.pending)
        metrics.outcome_bytes.set_function(lambda: self.bytes)

    # ── the input side: every window's events, before they become requests ─────────────
    def seen(self, window: Window) -> None:
        events = window.events
        if len({e.user_id for e in events}) == len(events):  # most windows: a user an event
            for event in events:
                self._seen_user(event.user_id, event, None)
        else:
            by_user: dict[int, list[Event]] = {}
            for event in events:
                by_user.setdefault(event.user_id, []).append(event)
            for user_id, mine in by_user.items():
                mine.sort(key=lambda e: (e.ts, e.source.offset))
                self._seen_user(user_id, mine[0], mine)
        self._bound()

    def _seen_user(self, user_id: int, first: Event, events: list[Event] | None) -> None:
        """A user's events of one window (``events``, in time order; None: ``first`` alone)."""
        users = self._users
        user = users.get(user_id)
        if user is None:
            recalled = self._recall(user_id, first.source.partition) if self._kept is not None else None
            if recalled is None:
                users[user_id] = _User(first.source.partition, 1)  # this window's request is out
                self.bytes += USER_BYTES
                return
            copy_of = (recalled.at, recalled.topic, recalled.offset, recalled.arm)
            user = users[user_id] = _User(first.source.partition, 0, shown=[recalled], recalled=copy_of)
            self.bytes += USER_BYTES + recalled.nbytes
            self.pending += 1
        else:
            users.move_to_end(user_id)
        mine = events or [first]
        if user.out:
            self._log(user, mine)
        for event in mine:
            if not user.shown:
                break
            self._judge(user_id, user, event)
        user.out += 1  # this window's request

    def _current(self, row: UserRequest) -> bool:
        """Of the partition's current assignment: a row of one revoked since belongs to the
        users forgotten then, not to the same ids seen again after it came back."""
        return self._is_current is None or self._is_current(row.events[0].source)

    def taken(self, rows: Sequence[UserRequest]) -> None:
        """Rows a shadow arm took: their answers come later than the live one."""
        for row in rows:
            if self._current(row) and (user := self._users.get(row.user_id)) is not None:
                user.out += 1

    def given_up(self, rows: Sequence[UserRequest]) -> None:
        """Rows whose answer will not come (a shadow's failed request)."""
        for row in rows:
            if self._current(row) and (user := self._users.get(row.user_id)) is not None:
                self._closed(row.user_id, user)

    # ── the output side: every answered batch (live), every shadow answer ───────────────
    def answered(self, outcome: BatchOutcome) -> None:
        answers = outcome.answers
        if self._is_current is not None and not all(self._current(row) for row, _ in answers):
            answers = [(row, recs) for row, recs in answers if self._current(row)]
        if answers:
            self.shown(outcome.arm or NO_EXPERIMENT, outcome.model_version, answers, live=True)
        if len(answers) < len(outcome.batch.requests):  # dead-lettered, revoked: no longer out
            judged = {id(row) for row, _ in answers}
            for row in outcome.batch.requests:
                if id(row) in judged or not self._current(row):
                    continue
                if (user := self._users.get(row.user_id)) is not None:
                    self._closed(row.user_id, user)

    def released(self, partitions: set[int]) -> None:
        """Partitions this member no longer holds: their users are another's to judge."""
        if not partitions:
            return
        gone = [(uid, user) for uid, user in self._users.items() if user.partition in partitions]
        for uid, user in gone:
            del self._users[uid]
            self._let_go(user)
        for key, (source, _) in list(self._judged_by.items()):
            if source.partition in partitions:  # never written here: the next owner replays it
                del self._judged_by[key]
        self._bound()  # (counts what was forgotten)

    def shadow_answered(
        self, arm: str, version: str, rows: Sequence[UserRequest], answers: Sequence[Recommendations]
    ) -> None:
        current = [(row, recs) for row, recs in zip(rows, answers, strict=True) if self._current(row)]
        if current:
            self.shown(arm, version, current)

    def shown(
        self,
        arm: str,
        version: str,
        answers: Sequence[tuple[UserRequest, Recommendations]],
        live: bool = False,
    ) -> None:
        """Answers to wait for their outcome; ``live``: emitted (kept in the durable state)."""
        naming_history = dropped = 0
        items = self._items.setdefault(arm, set())
        counting = len(items) < MAX_ITEMS_COUNTED
        users = self._users
        for row, recs in answers:
            ids = recs.item_ids
            if row.history and not set(row.history).isdisjoint(ids):
                naming_history += 1
            if counting:
                items.update(ids)
            user = users.get(row.user_id)
            if user is None:  # forgotten meanwhile (past the bounds): nothing to judge it on
                dropped += 1
                continue
            at = newest(row)
            topic = self._topic(at.source.topic)
            if self._copy(user, at.ts, topic, at.source.offset, arm):
                self._closed(row.user_id, user)  # its input answered again (replayed): judged or waiting
                continue
            rec = _Shown(at.ts, topic, at.source.offset, array("q", ids), arm, version)
            if user.log is None and user.cut == NEVER:  # nothing seen since: it waits
                self._wait(row.user_id, user, rec, live)
            else:
                self._keep(row.user_id, user, rec, live)
            self._closed(row.user_id, user)
        self._dropped += dropped
        self._bound()
        self.metrics.arm_recommendations.labels(arm, version).inc(len(answers))
        if naming_history:
            self.metrics.arm_naming_history.labels(arm, version).inc(naming_history)
        self.metrics.recommended_items.labels(arm).set(len(items))

    @staticmethod
    def _copy(user: _User, at: int, topic: int, offset: int, arm: str) -> bool:
        if user.recalled == (at, topic, offset, arm):
            return True
        return any(
            r.at == at and r.offset == offset and r.topic == topic and r.arm == arm for r in user.shown or ()
        )

    def _keep(self, user_id: int, user: _User, rec: _Shown, live: bool) -> None:
        """Judged on what the user did since the request went out; waits if still open."""
        if user.cut >= rec.at:  # the log let go of events that may have come after it
            self._dropped += 1
            return
        flat = user.log
        later = (
            sorted(
                (
                    tuple(flat[i : i + LOG_FIELDS])
                    for i in range(0, len(flat), LOG_FIELDS)
                    if flat[i] >= rec.at
                ),
                key=lambda logged: (logged[0], logged[2], logged[3]),  # time, then offset in its topic
            )
            if flat
            else ()
        )
        if not any(self._judge_one(user_id, user, rec, *logged) for logged in later):
            self._wait(user_id, user, rec, live)

    def _wait(self, user_id: int, user: _User, rec: _Shown, live: bool) -> None:
        shown = user.shown
        if shown is None:
            shown = user.shown = []
        shown.append(rec)
        self.pending += 1
        self.bytes += rec.nbytes
        if live and not rec.judged and self._kept is not None and self._newest_kept(shown, rec):
            self._keep_durably(user_id, user, rec)
        if len(shown) > PER_USER and len(same_arm := [r for r in shown if r.arm == rec.arm]) > PER_USER:
            self._drop(user, same_arm[0])

    # ── the durable side: the latest live recommendation, kept with the user's history ──
    @staticmethod
    def _newest_kept(shown: list[_Shown], rec: _Shown) -> bool:
        """Answers can come out of order: an older one does not replace the newer kept."""
        return all((r.at, r.offset) <= (rec.at, rec.offset) for r in shown if r.kept)

    def _packed(self, rec: _Shown) -> bytes:
        names = b"".join(
            len(raw).to_bytes(1, "little") + raw
            for raw in (
                rec.arm.encode()[:255],
                rec.version.encode()[:255],
                (self.experiment or "").encode()[:255],
            )
        )
        head = _KEPT_HEAD.pack(KEPT_LAYOUT, rec.at, rec.offset, self._topic_crcs[rec.topic])
        return head + names + rec.items.tobytes()

    def _keep_durably(self, user_id: int, user: _User, rec: _Shown) -> None:
        assert self._kept is not None and user.shown is not None
        if self._kept.set_waiting(user_id, user.partition, self._packed(rec)):
            for earlier in user.shown:
                earlier.kept = False  # one a user is kept: the newest
            rec.kept = True

    def _recall(self, user_id: int, partition: int) -> _Shown | None:
        """The user's recommendation kept in the durable state, to be judged here (not one
        of another experiment: its arms are not this one's)."""
        assert self._kept is not None
        blob = self._kept.waiting(user_id, partition)
        if not blob:
            return None
        kept = _unpacked(blob)
        if kept is None:
            return None
        if kept.experiment != (self.experiment or ""):
            self._dropped += 1
            return None
        rec = _Shown(
            kept.at, self._topic_of_crc(kept.topic_crc), kept.offset, kept.items, kept.arm, kept.version
        )
        rec.kept = True
        self.metrics.outcomes_recalled.inc()
        return rec

    def _closed(self, user_id: int, user: _User) -> None:
        """One answer fewer out: the log is kept only while something will read it."""
        user.out = max(0, user.out - 1)
        if user.out == 0:
            if user.log is not None:
                self.bytes -= 8 * len(user.log)
                user.log = None
                user.cut = NEVER
            if not user.shown:
                del self._users[user_id]
                self.bytes -= USER_BYTES

    def _log(self, user: _User, events: list[Event]) -> None:
        log = user.log
        if log is None:
            log = user.log = array("q")
        before = len(log)
        for event in events:
            log.extend((event.ts, event.item_id, self._topic(event.source.topic), event.source.offset))
        if len(log) > LOG_FIELDS * LOG_EVENTS:
            over = len(log) - LOG_FIELDS * LOG_EVENTS
            user.cut = max(user.cut, *log[0:over:LOG_FIELDS])
            del log[:over]
        self.bytes += 8 * (len(log) - before)

    def _topic(self, name: str) -> int:
        index = self._topics.get(name)
        if index is None:
            index = self._topics[name] = self._topic_of_crc(zlib.crc32(name.encode()))
        return index

    def _topic_of_crc(self, crc: int) -> int:
        """Topics are told apart by their name's crc32 (what a kept recommendation names)."""
        try:
            return self._topic_crcs.index(crc)  # a few input topics
        except ValueError:
            self._topic_crcs.append(crc)
            return len(self._topic_crcs) - 1

    # ── judging ────────────────────────────────────────────────────────────────────────
    def _judge(self, user_id: int, user: _User, event: Event) -> None:
        assert user.shown is not None
        ts, item, topic, offset = (
            event.ts,
            event.item_id,
            self._topic(event.source.topic),
            event.source.offset,
        )
        open_ = [(rec, rec.judged) for rec in user.shown if rec.kept] if self._kept is not None else ()
        for rec in [
            rec for rec in user.shown if self._judge_one(user_id, user, rec, ts, item, topic, offset)
        ]:
            self._drop(user, rec, decided=True)
        for rec, was_judged in open_:
            if not was_judged and (rec.judged or all(r is not rec for r in user.shown or ())):  # decided now
                self._let_go_when_written(event.source, user_id, user.partition, rec)
        if not user.shown:
            user.shown = None  # the user stays: seen() sends their request next

    def _judge_one(
        self, user_id: int, user: _User, rec: _Shown, ts: int, item: int, topic: int, offset: int
    ) -> bool:
        """One later interaction of the user; True: the recommendation's outcome is decided."""
        if ts <= rec.at and not (ts == rec.at and topic == rec.topic and offset > rec.offset):
            return False  # not after it (two topics' records at one millisecond are not ordered)
        m, arm = self.metrics, rec.arm
        if ts > rec.at + self.attribution_ms:
            if not rec.judged:
                m.outcomes.labels(arm, rec.version, "no_return").inc()
                self._example(user_id, rec, "no_return", ts, item)
            return True
        hit = item in rec.items
        if not rec.judged:
            rec.judged = True
            if hit:
                m.outcomes.labels(arm, rec.version, "hit").inc()
                m.outcome_hit_rank.labels(arm, rec.version).observe(rec.items.index(item) + 1)
            else:
                m.outcomes.labels(arm, rec.version, "miss").inc()
            self._example(user_id, rec, "hit" if hit else "miss", ts, item)
        if hit:
            m.outcome_any_hits.labels(arm, rec.version).inc()
        return hit

    def _example(self, user: int, rec: _Shown, outcome: str, ts: int, item: int) -> None:
        if self.examples_topic is not None:
            self._examples.append(
                example_record(self.examples_topic, user, rec, outcome, ts, item, self.experiment)
            )

    def _let_go_when_written(self, source: RawRecord, user_id: int, partition: int, rec: _Shown) -> None:
        entry = self._judged_by.get(id(source))
        if entry is None:
            entry = self._judged_by[id(source)] = (source, [])
        entry[1].append((user_id, partition, rec.at, rec.offset))

    def judged_inputs_written(self, sources: Iterable[RawRecord]) -> None:
        """Inputs about to be written (before their changelog round and their commit): the
        kept recommendations they judged are let go, unless a newer one replaced them."""
        if not self._judged_by or self._kept is None:
            return
        for source in sources:
            entry = self._judged_by.pop(id(source), None)
            if entry is None:
                continue
            for user_id, partition, at, offset in entry[1]:
                blob = self._kept.waiting(user_id, partition)
                kept = _unpacked(blob) if blob else None
                if kept is not None and (kept.at, kept.offset) == (at, offset):
                    self._kept.set_waiting(user_id, partition, b"")

    def take_examples(self) -> list[OutputRecord]:
        """The joined examples decided since the last take (written with the batch that
        decided them: before its inputs are committed)."""
        taken, self._examples = self._examples, []
        return taken

    def _drop(self, user: _User, rec: _Shown, decided: bool = False) -> None:
        assert user.shown is not None
        user.shown.remove(rec)
        self.pending -= 1
        self.bytes -= rec.nbytes
        if not decided and not rec.judged and not rec.kept:  # kept: judged where the user is next seen
            self._dropped += 1  # counted by _bound, once per call (a metric update costs)

    def _bound(self) -> None:
        """The least recently active users go first; a user with a request out is passed
        over (its answer would find the user gone, or worse, new: the log is what judges it)."""
        users = self._users
        passed = 0  # bounded: users out beyond the bound are the credits' to bound, not a walk's
        while users and (len(users) > self.max_users or self.bytes > self.max_bytes) and passed < PASS_OVER:
            uid, user = next(iter(users.items()))
            if user.out:
                users.move_to_end(uid)
                passed += 1
                continue
            del users[uid]
            self._let_go(user)
        if self._dropped:
            self.metrics.outcomes_dropped.inc(self._dropped)
            self._dropped = 0

    def _let_go(self, user: _User) -> None:
        self.bytes -= USER_BYTES + (8 * len(user.log) if user.log is not None else 0)
        for rec in list(user.shown or ()):
            self._drop(user, rec)

    def counts(self) -> dict[tuple[str, str], Counter[str]]:
        """Outcomes so far by (arm, version): hit, miss, no_return (what the guard reads)."""
        out: dict[tuple[str, str], Counter[str]] = {}
        for family in self.metrics.outcomes.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                out.setdefault((labels["arm"], labels["version"]), Counter())[labels["outcome"]] = int(
                    sample.value
                )
        return out
