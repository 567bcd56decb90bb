"""The in-stream join (pipeline/quality/online.py) against the offline report
(pipeline/quality/outcomes.py, the oracle): whatever comes first, a user's next window or
the answer to the last, the same recommendations are judged hits and misses, and the same
any-hits. Users come back to items they saw before."""

from __future__ import annotations

import random
import tracemalloc
from array import array

import orjson
import pytest

from pipeline.events import Event, RawRecord, Recommendations, UserRequest, Window
from pipeline.metrics import Metrics
from pipeline.quality.online import PER_USER, SHOWN_BYTES, USER_BYTES, OnlineOutcomes
from pipeline.quality.outcomes import outcomes
from pipeline.testing.builders import event

ATTRIBUTION_MS = 60_000


Row = list[tuple[int, int, int, int]]  # one user's events of a window: (user, item, ts, offset)


def scenario(seed: int) -> tuple[list[list[Row]], dict[int, list[int]]]:
    """Windows of rows, and per row (by its first offset) the items recommended. A row holds
    one to three events of its user, some at the same millisecond; users come back to items
    they saw before, some after the attribution window."""
    rng = random.Random(seed)
    windows: list[list[Row]] = []
    recs: dict[int, list[int]] = {}
    clock = {u: 1_000_000 + rng.randrange(10_000) for u in range(12)}
    offset = 0
    for _ in range(40):
        window = []
        for user in rng.sample(range(12), rng.randrange(1, 6)):
            row = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                clock[user] += rng.choice((0, 0, 1_000, 5_000, 30_000, 90_000))
                row.append((user, user * 1_000 + rng.randrange(12), clock[user], offset))
                offset += 1
            recs[row[0][3]] = rng.sample([user * 1_000 + k for k in range(12)], 4)
            window.append(row)
        windows.append(window)
    return windows, recs


class KeptInDict:
    """The durable user state's part in the join (``WaitingStore``), in a dict."""

    def __init__(self) -> None:
        self.kept: dict[int, bytes] = {}

    def waiting(self, user_id: int, partition: int) -> bytes | None:
        return self.kept.get(user_id)

    def set_waiting(self, user_id: int, partition: int, waiting: bytes) -> bool:
        self.kept[user_id] = waiting
        return True

    def waiting_users(self) -> set[int]:
        return {user for user, blob in self.kept.items() if blob}


@pytest.mark.parametrize("seed", range(25))
def test_the_stream_judges_as_the_report_does_whatever_arrives_first(seed: int) -> None:
    judged_as_the_report(seed)


@pytest.mark.parametrize("seed", range(10))
def test_with_durable_state_restarts_between_windows_judge_as_the_report(seed: int) -> None:
    """Every few windows the process is replaced (a deploy: memory gone, the durable state
    kept): each user's waiting recommendation is recalled and judged as if never forgotten.
    Any-hits of recommendations already judged are the memory's alone: a restart may miss some."""
    judged_as_the_report(seed, restart_every=3)


def report_docs(answered: list[tuple[UserRequest, Recommendations]]) -> list[dict[str, object]]:
    """The output records of answers, as the offline report reads them."""
    return [
        {
            "model": {"name": "m", "version": "1"},
            "items": [{"item_id": i} for i in r.item_ids],
            "sources": [{"topic": "t", "partition": 0, "offset": e.source.offset} for e in row.events],
        }
        for row, r in answered
    ]


def judged_as_the_report(seed: int, restart_every: int | None = None) -> None:
    windows, recs = scenario(seed)
    rng = random.Random(seed + 1000)
    metrics = Metrics()
    kept = KeptInDict() if restart_every else None
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics, kept=kept)
    records: list[RawRecord] = []
    docs: list[dict[str, object]] = []
    waiting: list[tuple[int, list[tuple[UserRequest, Recommendations]]]] = []  # (due window, answers)
    for w, window in enumerate(windows):
        if restart_every and w % restart_every == 0:  # a clean stop: what is out answered, then gone
            for _due, answered in waiting:
                join.shown("a", "1", answered, live=True)
                docs.extend(report_docs(answered))
                join.judged_inputs_written([e.source for row, _ in answered for e in row.events])
            waiting = []
            join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics, kept=kept)
        rows = [[event(off, user=u, item=i, ts=ts) for u, i, ts, off in row] for row in window]
        arrived = [e for row in rows for e in row]
        rng.shuffle(arrived)  # a window's events in any order: the join orders a user's by time
        join.seen(Window(tuple(arrived), 0, 0))
        for e in (e for row in rows for e in row):
            doc = {"user_id": e.user_id, "item_id": e.item_id, "ts": e.ts, "event_id": f"e{e.source.offset}"}
            records.append(RawRecord("t", 0, e.source.offset, e.ts, None, orjson.dumps(doc), ()))
        answers = [
            (
                UserRequest(row[0].user_id, (), tuple(row)),
                Recommendations(tuple(recs[row[0].source.offset]), ()),
            )
            for row in rows
        ]
        waiting.append((w + rng.randrange(0, 4), answers))  # answered up to 3 windows later
        for _due, answered in [x for x in waiting if x[0] <= w]:
            join.shown("a", "1", answered, live=True)
            docs.extend(report_docs(answered))
            join.judged_inputs_written([e.source for row, _ in answered for e in row.events])
        waiting = [x for x in waiting if x[0] > w]
    tally = outcomes(records, docs, ATTRIBUTION_MS)["m:1"]
    counted = join.counts()[("a", "1")]
    assert (counted["hit"], counted["hit"] + counted["miss"]) == (tally.next_hits, tally.judged)
    assert tally.judged > 20  # something to agree on
    any_hits = metrics.registry.get_sample_value(
        "pipeline_outcome_any_hits_total", {"arm": "a", "version": "1"}
    )
    if restart_every:
        assert any_hits is not None and any_hits <= tally.any_hits
        assert metrics.registry.get_sample_value("pipeline_outcomes_recalled_total") > 5  # restarts happened
        return
    assert any_hits == tally.any_hits
    ranks = metrics.registry.get_sample_value("pipeline_outcome_hit_rank_sum", {"arm": "a", "version": "1"})
    assert ranks == sum(rank * n for rank, n in tally.positions.items())


def test_a_joined_example_is_an_interaction_the_trainer_reads() -> None:
    from pipeline.quality.online import _Shown, example_record
    from pipeline.recsys.data import from_events

    rec = _Shown(100, 0, 7, array("q", (1, 2, 3)), "treatment", "2")
    record = example_record("examples", 5, rec, "hit", 200, 2, "exp")
    doc = orjson.loads(record.value)
    assert (record.topic, record.key, doc["rank"], doc["recommendation"]["arm"]) == (
        "examples",
        b"5",
        2,
        "treatment",
    )
    assert from_events([doc]).summary()["interactions"] == 1  # user 5 took item 2 at 200


def filled(join: OnlineOutcomes, users: range, items: int = 10) -> None:
    """Each user a window and an answer nobody comes back to: a recommendation waiting."""
    for user in users:
        e = event(user, user=user, item=user, ts=1_000 + user)
        join.seen(Window((e,), 0, 0))
        join.shown("a", "1", [(UserRequest(user, (), (e,)), Recommendations(tuple(range(items)), ()))])


def test_the_bytes_estimate_errs_high_and_the_bound_holds() -> None:
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000_000, Metrics(), max_bytes=1 << 30)
    filled(join, range(100))  # warm: metric children, first allocations
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    estimate_before = join.bytes
    filled(join, range(100, 5_100))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert join.pending == 5_100
    assert used <= join.bytes - estimate_before < 2 * used

    metrics = Metrics()
    bounded = OnlineOutcomes(ATTRIBUTION_MS, 1_000_000, metrics, max_bytes=100_000)
    filled(bounded, range(5_000))
    assert bounded.bytes <= 100_000 and bounded.pending < 5_000
    dropped = metrics.registry.get_sample_value("pipeline_outcomes_dropped_total")
    assert dropped == 5_000 - bounded.pending  # each forgotten one counted


def test_users_with_nothing_open_are_let_go() -> None:
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics())
    filled(join, range(10))
    e = event(99, user=3, item=5, ts=1_000_000)  # user 3 back, past the window: no_return
    join.seen(Window((e,), 0, 0))
    join.shown("a", "1", [(UserRequest(3, (), (e,)), Recommendations((5,), ()))])
    later = event(100, user=3, item=5, ts=1_000_001)  # the new one judged a hit: nothing open
    join.seen(Window((later,), 0, 0))
    join.shown("a", "1", [(UserRequest(3, (), (later,)), Recommendations((7,), ()))])
    counts = join.counts()[("a", "1")]
    assert (counts["no_return"], counts["hit"]) == (1, 1)
    assert join.pending == 9 + 1  # nine never came back; user 3's last one waits
    waiting_bytes = join.bytes
    assert waiting_bytes == 10 * USER_BYTES + sum(SHOWN_BYTES + 8 * n for n in [10] * 9 + [1])


def answer(join: OnlineOutcomes, e: Event, items: tuple[int, ...], history: tuple[int, ...] = ()) -> None:
    join.shown("a", "1", [(UserRequest(e.user_id, history, (e,)), Recommendations(items, ()))])


def test_an_answer_older_than_what_the_log_let_go_is_not_judged() -> None:
    """A backfill: 100 of the user's windows pass before the first answer is back; the log
    keeps 64, so the first answer's next item is gone: counted as dropped, never a miss."""
    metrics = Metrics()
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics)
    first = event(0, user=1, item=10, ts=1_000)
    join.seen(Window((first,), 0, 0))
    for n in range(1, 101):
        join.seen(Window((event(n, user=1, item=10 + n, ts=1_000 + n),), 0, 0))
    answer(join, first, (11,))  # right, but its next event left the log
    assert join.counts() == {}
    assert metrics.registry.get_sample_value("pipeline_outcomes_dropped_total") == 1


def test_a_user_with_a_request_out_is_not_evicted() -> None:
    join = OnlineOutcomes(ATTRIBUTION_MS, 2, Metrics())
    out = event(0, user=1, item=10, ts=1_000)
    join.seen(Window((out,), 0, 0))
    nxt = event(1, user=1, item=11, ts=2_000)
    join.seen(Window((nxt,), 0, 0))  # logged: user 1 has a request out
    for user in range(2, 6):  # past max_users: others go, user 1 stays
        join.seen(Window((event(10 + user, user=user, item=1, ts=1_000),), 0, 0))
    answer(join, out, (11, 12))
    assert join.counts()[("a", "1")]["hit"] == 1


def test_dead_lettered_and_revoked_rows_close_their_users() -> None:
    from pipeline.events import BatchOutcome, DeadLetter, InferenceBatch

    current = {0: True, 1: True}
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), is_current=lambda r: current[r.partition])
    rows = [UserRequest(u, (), (event(u, user=u, item=5, ts=1_000, partition=u % 2),)) for u in range(4)]
    join.seen(Window(tuple(r.events[0] for r in rows), 0, 0))
    outcome = BatchOutcome(InferenceBatch(tuple(rows), 0, 0), model_version="1")
    outcome.answers = [(rows[0], Recommendations((5,), ())), (rows[1], Recommendations((6,), ()))]
    outcome.failures = [DeadLetter(r.events[0].source, "x", "X", "", 1) for r in rows[2:]]
    current[1] = False  # partition 1 revoked before the answers came (released after the drain)
    join.answered(outcome)
    assert join.pending == 1 and set(join._users) == {0, 1, 3}  # 2 dead-lettered: closed
    join.released({1})  # its users (1, 3) are its next owner's
    assert join.pending == 1 and set(join._users) == {0}
    late = UserRequest(3, (), (event(9, user=3, item=5, ts=2_000, partition=1),))
    join.given_up([late])  # a late shadow failure of the revoked generation: nobody's now
    join.shadow_answered("s", "9", [late], [Recommendations((5,), ())])
    assert set(join._users) == {0} and join.pending == 1
    join.released({0})
    assert join.pending == 0 and not join._users and join.bytes == 0


def test_waiting_recommendations_are_bounded_per_user_and_arm_and_history_names_counted() -> None:
    metrics = Metrics()
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics)
    for n in range(12):  # each judged a miss by the next event, then kept for an any-hit
        e = event(n, user=1, item=n, ts=1_000 + n)
        join.seen(Window((e,), 0, 0))
        answer(join, e, (99, n), history=(n,))  # names the user's own item
    assert join.pending == PER_USER
    assert metrics.registry.get_sample_value("pipeline_outcomes_dropped_total") == 0  # judged ones go
    sample = metrics.registry.get_sample_value
    assert sample("pipeline_arm_recommendations_naming_history_total", {"arm": "a", "version": "1"}) == 12


def seen(join: OnlineOutcomes, kept: KeptInDict | None, *events: Event, written: bool = True) -> None:
    """A window seen by the join; ``written``: then its inputs written (answered)."""
    join.seen(Window(events, 0, 0))
    if written:
        join.judged_inputs_written([e.source for e in events])


def test_with_durable_state_users_past_the_memory_bound_are_judged_when_they_return() -> None:
    """Memory lets users go; their waiting recommendations are kept with their state and
    recalled when they come back: judged, not dropped. Without it, they are dropped."""
    durable = KeptInDict()
    for kept, hits, dropped in ((durable, 10, 0), (None, 0, 10)):
        metrics = Metrics()
        join = OnlineOutcomes(ATTRIBUTION_MS, 2, metrics, kept=kept)
        for user in range(10):
            e = event(user, user=user, item=user, ts=1_000)
            seen(join, kept, e)
            join.shown(
                "a", "1", [(UserRequest(user, (), (e,)), Recommendations((500 + user,), ()))], live=True
            )
        for user in range(10):  # each back for the item recommended to them
            seen(join, kept, event(100 + user, user=user, item=500 + user, ts=2_000))
        assert join.counts().get(("a", "1"), {}).get("hit", 0) == hits
        assert (metrics.registry.get_sample_value("pipeline_outcomes_dropped_total") or 0) == dropped
    assert durable.waiting_users() == set()  # judged, the inputs that judged them written: let go
    restarted = OnlineOutcomes(ATTRIBUTION_MS, 2, Metrics(), kept=durable)
    for user in range(10):
        seen(restarted, durable, event(200 + user, user=user, item=500 + user, ts=3_000))
    assert restarted.counts() == {}


def test_a_judged_recommendation_is_let_go_only_once_the_input_that_judged_it_is_written() -> None:
    """A stop between the judging and the write replays that input: judged again by it, not
    lost. Once written it is not recalled (the input is not replayed)."""
    kept = KeptInDict()
    first = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept)
    x = event(0, user=1, item=10, ts=1_000)
    seen(first, kept, x)
    first.shown("a", "1", [(UserRequest(1, (), (x,)), Recommendations((11,), ()))], live=True)
    judging = event(1, user=1, item=11, ts=2_000)
    seen(first, kept, judging, written=False)
    assert first.counts()[("a", "1")]["hit"] == 1 and kept.waiting_users() == {1}
    replay = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept)  # the stop came first
    seen(replay, kept, judging)
    assert replay.counts()[("a", "1")]["hit"] == 1 and kept.waiting_users() == set()
    after = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept)
    seen(after, kept, event(2, user=1, item=11, ts=3_000))
    assert after.counts() == {}


def test_a_newer_recommendation_kept_before_the_judging_input_is_written_stays() -> None:
    kept = KeptInDict()
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept)
    x = event(0, user=1, item=10, ts=1_000)
    seen(join, kept, x)
    join.shown("a", "1", [(UserRequest(1, (), (x,)), Recommendations((11,), ()))], live=True)
    nxt = event(1, user=1, item=11, ts=2_000)
    seen(join, kept, nxt, written=False)
    join.shown("a", "1", [(UserRequest(1, (), (nxt,)), Recommendations((12,), ()))], live=True)
    join.judged_inputs_written([nxt.source])  # its answer replaced the judged one first
    restarted = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept)
    seen(restarted, kept, event(2, user=1, item=12, ts=3_000))
    assert restarted.counts()[("a", "1")] == {"hit": 1}


def test_only_live_answers_are_kept_and_a_replayed_answer_waits_once() -> None:
    kept = KeptInDict()
    metrics = Metrics()
    join = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics, kept=kept)
    e = event(0, user=1, item=10, ts=1_000)
    seen(join, kept, e)
    row = UserRequest(1, (), (e,))
    join.shadow_answered("shadow", "3", [row], [Recommendations((11,), ())])
    assert kept.kept == {}  # a shadow's answer lives in memory only
    join.taken([row])
    join.shown("a", "1", [(row, Recommendations((11,), ()))], live=True)
    assert set(kept.kept) == {1}
    join.shown("a", "1", [(row, Recommendations((11,), ()))], live=True)  # its input replayed
    assert join.pending == 2  # the shadow's and the live one: not the copy
    restarted = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics, kept=kept)
    seen(restarted, kept, event(1, user=1, item=11, ts=2_000))
    counts = restarted.counts()
    assert counts[("a", "1")]["hit"] == 1 and ("shadow", "3") not in counts  # the shadow's was memory's


def test_a_replay_after_a_crash_judges_the_recalled_recommendation_once() -> None:
    """The crash left X's recommendation kept and X uncommitted. The replay sees X (the
    recommendation recalled), then X+1 before X's answer comes again (a catch-up's order):
    X+1 judges it; the answer to X again is a copy, not a second recommendation."""
    kept = KeptInDict()
    first = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept)
    x = event(0, user=1, item=10, ts=1_000)
    seen(first, kept, x)
    first.shown("a", "1", [(UserRequest(1, (10,), (x,)), Recommendations((11, 12), ()))], live=True)
    metrics = Metrics()
    replay = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics, kept=kept)
    seen(replay, kept, x)
    seen(replay, kept, event(1, user=1, item=11, ts=2_000))
    replay.shown("a", "1", [(UserRequest(1, (10,), (x,)), Recommendations((11, 12), ()))], live=True)
    assert replay.counts()[("a", "1")] == {"hit": 1}
    assert metrics.registry.get_sample_value("pipeline_outcomes_recalled_total") == 1


def test_a_recommendation_of_another_experiment_is_not_judged_in_this_one() -> None:
    kept = KeptInDict()
    before = OnlineOutcomes(ATTRIBUTION_MS, 1_000, Metrics(), kept=kept, experiment="ranker-1")
    x = event(0, user=1, item=10, ts=1_000)
    seen(before, kept, x)
    before.shown("treatment", "7", [(UserRequest(1, (), (x,)), Recommendations((11,), ()))], live=True)
    metrics = Metrics()
    after = OnlineOutcomes(ATTRIBUTION_MS, 1_000, metrics, kept=kept, experiment="ranker-2")
    seen(after, kept, event(1, user=1, item=11, ts=2_000))
    assert after.counts() == {}
    assert metrics.registry.get_sample_value("pipeline_outcomes_dropped_total") == 1
