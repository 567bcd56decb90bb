"""Durable user state in the assembled runtime, in process (the testing kit): histories
survive a new member on a fresh disk (a deploy), a member back on a stale disk, restores
that fail, and a partition held while it restores; the recommendations stay as right after
each as before (the model never names a history item it was sent)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline import errors
from pipeline.events import RawRecord
from pipeline.operators.coalesce import merge_pairs
from pipeline.quality.outcomes import outcomes
from pipeline.recsys.scoring import HISTORY_PAD
from pipeline.state.histories import user_key
from pipeline.testing import running, topology
from pipeline.testing.builders import input_record
from pipeline.testing.fake_triton import FakeTriton, hashed_scorer
from pipeline.testing.run import InProcessRun
from pipeline.topology.schema import Topology

USERS = 40
PARTITIONS = 4
SCORE = hashed_scorer(1_000, 10)  # the FakeTriton's own scores
ATTRIBUTION_MS = 1_800_000  # the topology's default


def favourites(user: int) -> list[int]:
    """The items the model would recommend ``user`` with no history."""
    ids, _ = SCORE(np.array([user]), np.full((1, 1), HISTORY_PAD))
    return [int(i) for i in ids[0]]


def visits(items_of: dict[int, list[int]], ts0: int) -> list[RawRecord]:
    """Each user views its items in order, keyed by user, on partition user % PARTITIONS."""
    records = []
    for user, items in items_of.items():
        for n, item in enumerate(items):
            records.append(
                input_record(
                    partition=user % PARTITIONS,
                    key=str(user).encode(),
                    user_id=user,
                    item_id=item,
                    ts=ts0 + n,
                )
            )
    return records


def phase_one() -> list[RawRecord]:
    """Every user views exactly what the model would recommend them: forgetting it shows."""
    return visits({u: favourites(u) for u in range(USERS)}, ts0=now_base())


def phase_two() -> list[RawRecord]:
    return visits({u: [900 + u % 50] for u in range(USERS)}, ts0=now_base() + 1_000)


def now_base() -> int:
    from pipeline.testing.builders import now_ms

    return now_ms() - 60_000


def stateful(path: Path | None, **state: object) -> Topology:
    return topology(state={"dir": str(path) if path else None, **state})


def history_share(run: InProcessRun, earlier: Iterable[RawRecord]) -> float:
    """Share of the run's recommendations that name an item the user viewed in ``earlier``."""
    seen: dict[int, set[int]] = {}
    for record in earlier:
        doc = _doc(record)
        seen.setdefault(doc["user_id"], set()).add(doc["item_id"])
    recs = run.sink.recommendations()
    naming = sum(1 for r in recs if seen.get(r["user_id"], set()) & {i["item_id"] for i in r["items"]})
    return naming / max(1, len(recs))


def _doc(record: RawRecord) -> dict:
    import orjson

    return orjson.loads(record.value or b"{}")


def rebuilt(records: Iterable[RawRecord], length: int = 16) -> dict[int, tuple[int, ...]]:
    """Each user's history rebuilt from the inputs alone."""
    pairs: dict[int, list[tuple[int, int]]] = {}
    for record in records:
        doc = _doc(record)
        pairs.setdefault(doc["user_id"], []).append((doc["ts"], doc["item_id"]))
    return {u: tuple(i for _, i in merge_pairs({}, p, length, True)) for u, p in pairs.items()}


def stored(run: InProcessRun) -> dict[int, tuple[int, ...]]:
    users = run.runtime.users
    return {u: users.stores[u % PARTITIONS].history(u) for u in range(USERS)}


def last_in_changelog(run: InProcessRun) -> dict[bytes, bytes]:
    """What compaction would keep: each key's last record."""
    topic = run.runtime.topology.changelog_topic
    return {rec.key: rec.value for rec in run.sink.records if rec.topic == topic and rec.key is not None}


async def test_a_new_member_on_a_fresh_disk_restores_every_history(tmp_path: Path) -> None:
    first, second = phase_one(), phase_two()
    async with running(stateful(tmp_path / "a"), first) as run1:
        await run1.settled()
    async with running(stateful(tmp_path / "b"), second, after=run1) as run2:  # a deploy: new pod, new disk
        await run2.settled()
        assert stored(run2) == rebuilt(first + second)
        changelog = last_in_changelog(run2)
        for user in range(USERS):  # the record compaction keeps is the stored history
            assert changelog[user_key(user)] == run2.runtime.users.stores[user % PARTITIONS]._packed(user)
    assert run2.lost() == [] and run2.duplicates() == 0
    new_recs = [r for r in run2.sink.recommendations() if r["sources"][0]["offset"] >= 100]
    assert len(new_recs) == USERS
    assert history_share(run2, first) == 0.0


async def test_without_durable_state_a_deploy_forgets_and_the_answers_show_it(tmp_path: Path) -> None:
    """The same deploy in memory only: what the test above guards against is measurable."""
    first, second = phase_one(), phase_two()
    async with running(stateful(None), first) as run1:
        await run1.settled()
    async with running(stateful(None), second, after=run1) as run2:
        await run2.settled()
    phase_two_recs = [r for r in run2.sink.recommendations()[len(run1.sink.recommendations()) :]]
    assert len(phase_two_recs) == USERS
    forgot = sum(
        1 for r in phase_two_recs if set(favourites(r["user_id"])) & {i["item_id"] for i in r["items"]}
    )
    assert forgot == USERS


async def test_a_member_back_on_its_stale_disk_catches_up_from_where_its_store_was(tmp_path: Path) -> None:
    first, second, third = (
        phase_one(),
        phase_two(),
        visits({u: [800] for u in range(USERS)}, now_base() + 2_000),
    )
    async with running(stateful(tmp_path / "a"), first) as run1:
        await run1.settled()
    async with running(stateful(tmp_path / "b"), second, after=run1) as run2:  # elsewhere meanwhile
        await run2.settled()
    async with running(stateful(tmp_path / "a"), third, after=run2) as run3:
        await run3.settled()
        assert stored(run3) == rebuilt(first + second + third)
        restored = run3.runtime.metrics.state_restored_records
        applied = sum(restored.labels(str(p))._value.get() for p in range(PARTITIONS))
    # only what run2 wrote after run1's last round, not the whole changelog
    assert 0 < applied <= len(last_in_changelog(run2)) + USERS


async def test_the_same_disk_after_a_clean_stop_restores_nothing(tmp_path: Path) -> None:
    async with running(stateful(tmp_path / "a"), phase_one()) as run1:
        await run1.settled()
    async with running(stateful(tmp_path / "a"), phase_two(), after=run1) as run2:
        await run2.settled()
        restored = run2.runtime.metrics.state_restored_records
        assert sum(restored.labels(str(p))._value.get() for p in range(PARTITIONS)) == 0
    assert history_share(run2, phase_one()) == 0.0


async def test_a_partition_is_held_while_it_restores_and_the_others_flow(tmp_path: Path) -> None:
    first, second = phase_one(), phase_two()
    async with running(stateful(tmp_path / "a"), first) as run1:
        await run1.settled()

    def answered(partition: int) -> int:
        return sum(1 for (_, p, offset), n in run2.sink.answers().items() if p == partition and offset >= 100)

    async with running(stateful(tmp_path / "b"), second, after=run1, held_restores={1}) as run2:
        await run2.until(lambda: all(answered(p) == USERS // PARTITIONS for p in (0, 2, 3)))
        assert answered(1) == 0 and run2.runtime.users.restoring == {1}
        assert not run2.runtime.is_ready()
        assert run2.runtime.metrics.registry.get_sample_value("pipeline_state_restoring_partitions") == 1
        run2.changelog.release_reads()
        await run2.settled()
        assert run2.runtime.is_ready()
    assert run2.lost() == [] and history_share(run2, first) == 0.0


async def test_restore_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    async with running(stateful(tmp_path / "a"), phase_one()) as run1:
        await run1.settled()
    t = stateful(tmp_path / "b", restore_attempts=3)
    async with running(t, phase_two(), after=run1, held_restores=None) as run2:
        run2.changelog.fail_reads = 2
        run2.changelog.release_reads()
        assert not run2.runtime.is_ready()  # restoring: not ready
        await run2.settled(timeout_s=20)
        assert run2.runtime.is_ready()
        failures = run2.runtime.metrics.state_restore_failures.labels("TimeoutError")._value.get()
    assert failures == 2 and run2.lost() == []
    assert history_share(run2, phase_one()) == 0.0


async def test_a_restore_that_never_succeeds_stops_the_pipeline_with_one_line(tmp_path: Path) -> None:
    async with running(stateful(tmp_path / "a"), phase_one()) as run1:
        await run1.settled()
    t = stateful(tmp_path / "b", restore_attempts=2)
    with pytest.raises(errors.Fatal, match=r"restoring partition \d failed 2 times"):
        async with running(t, phase_two(), after=run1, held_restores=None) as run2:
            run2.changelog.fail_reads = 100
            run2.changelog.release_reads()
            await run2.until(lambda: False, timeout_s=15)
    assert run2.sink.recommendations()[len(run1.sink.recommendations()) :] == []  # nothing answered blind


async def test_a_record_keyed_by_another_user_is_dead_lettered_with_state(tmp_path: Path) -> None:
    records = [input_record(key=b"7", user_id=8, item_id=1), input_record(user_id=9, item_id=1)]
    async with running(stateful(tmp_path / "a"), records) as run:
        await run.settled()
    assert sorted(run.sink.dead_letter_reasons()) == ["key_not_user", "key_not_user"]


async def test_a_stop_drains_the_writes_that_wait_for_the_changelog(tmp_path: Path) -> None:
    async with running(stateful(tmp_path / "a")) as run:
        run.source.add(phase_one())
        await asyncio.sleep(0)  # stopped mid-stream: a window still open
    assert run.runtime.clean_stop  # every write in flight drained: its changelog round came
    assert run.runtime.partitions.in_flight == 0


async def test_a_backfill_neither_evicts_live_users_nor_becomes_their_newest_item(tmp_path: Path) -> None:
    """Live users' histories, then a backfill of many other users' years-old events (and an
    old event of each live user) through a cache far too small for them all."""
    live = phase_one()
    old_ts = now_base() - 86_400_000
    backfill = [
        input_record(
            topic="interactions.backfill",
            partition=u % PARTITIONS,
            key=str(u).encode(),
            user_id=u,
            item_id=700 + u % 100,
            ts=old_ts + u,
        )
        for u in range(USERS, USERS + 3_000)
    ] + [
        input_record(
            topic="interactions.backfill",
            partition=u % PARTITIONS,
            key=str(u).encode(),
            user_id=u,
            item_id=999,
            ts=old_ts,
        )
        for u in range(USERS)
    ]
    t = topology(
        source={"topics": ["interactions", "interactions.backfill"]},
        window={"history_cache_mb": 0.05},
        validation={"max_age_ms": 10 * 86_400_000},
        state={"dir": str(tmp_path / "a")},
    )
    async with running(t, live) as run:
        await run.settled()
        run.source.add(backfill)
        await run.settled()
        histories = stored(run)
        cache = run.runtime.users.cache_bytes()
    expected = rebuilt(live + backfill)
    assert histories == {u: expected[u] for u in range(USERS)}
    assert all(h[-1] != 999 for h in histories.values())  # the old event took its place by time
    assert all(999 in h for h in histories.values())
    assert cache <= 0.05 * (1 << 20)


def last_recommended(run: InProcessRun) -> dict[int, int]:
    """Each user's best item in their latest recommendation."""
    latest: dict[int, tuple[int, int]] = {}
    for r in run.sink.recommendations():
        at = max(s["offset"] for s in r["sources"])
        if at >= latest.get(r["user_id"], (-1, 0))[0]:
            latest[r["user_id"]] = (at, r["items"][0]["item_id"])
    return {user: item for user, (_, item) in latest.items()}


@pytest.mark.parametrize("durable", ["kept", "not kept", "memory"])
async def test_recommendations_waiting_at_a_deploy_are_judged_by_the_next_member(
    tmp_path: Path, durable: str
) -> None:
    """Each user's latest recommendation waits for its outcome when the process is replaced;
    the user then takes its best item. With durable state the new member, on a fresh disk,
    restores it with the history and judges every one a hit, as the offline report does
    over both runs; with `outcomes.durable: false`, or in memory only, none is judged."""

    def member(path: Path) -> Topology:
        if durable == "memory":
            return stateful(None)
        return topology(state={"dir": str(path)}, outcomes={"durable": durable == "kept"})

    first = phase_one()
    async with running(member(tmp_path / "a"), first) as run1:
        await run1.settled()
    taken = last_recommended(run1)
    assert len(taken) == USERS
    second = visits({user: [item] for user, item in taken.items()}, ts0=now_base() + 1_000)
    async with running(member(tmp_path / "b"), second, after=run1) as run2:
        await run2.settled()
    assert run2.lost() == [] and run2.duplicates() == 0
    hits = counted(run2)["hit"]
    recalled = run2.runtime.metrics.registry.get_sample_value("pipeline_outcomes_recalled_total")
    if durable != "kept":
        assert (hits, recalled) == (0, 0)
        return
    assert hits == recalled == USERS
    inputs = [r for log in run2.source.logs.values() for r in log]  # both runs', as the broker has them
    (tally,) = outcomes(inputs, run2.sink.recommendations(), ATTRIBUTION_MS).values()
    both = counted(run1) + counted(run2)
    assert (tally.next_hits, tally.judged) == (both["hit"], both["hit"] + both["miss"])


def counted(run: InProcessRun) -> Counter[str]:
    assert run.runtime.outcomes is not None
    return run.runtime.outcomes.counts().get(("default", "1"), Counter())


@pytest.mark.parametrize("another_batch_written", [True, False])
async def test_a_stop_before_the_judging_inputs_are_written_loses_no_outcome(
    tmp_path: Path, another_batch_written: bool
) -> None:
    """Each user takes their top item; Triton then answers slower than the drain, so the
    stop leaves those inputs unwritten and uncommitted, while (with a dead letter) another
    batch's changelog round runs meanwhile. The next member replays them: every outcome is
    judged, each joined example written at least once and at most twice."""

    def with_examples(path: Path) -> Topology:
        return topology(state={"dir": str(path)}, outcomes={"examples_topic": "examples"})

    triton = FakeTriton(top_k=10)
    async with running(with_examples(tmp_path / "a"), phase_one(), triton=triton) as run1:
        await run1.settled()
        taken = last_recommended(run1)
        triton.delay_s = 6.0  # past the 2 s drain
        run1.source.add(visits({user: [item] for user, item in taken.items()}, ts0=now_base() + 1_000))
        await run1.until(lambda: counted(run1)["hit"] >= USERS - 1)  # judged as they were seen
        if another_batch_written:
            run1.source.add([input_record(partition=0, key=b"1", user_id=1, item_id=-1, ts=now_base())])
            await run1.until(lambda: len(run1.sink.dead_letters()) >= 1)
    triton.delay_s = 0.0
    async with running(with_examples(tmp_path / "b"), (), triton=triton, after=run1) as run2:
        await run2.settled()
    assert run2.lost() == []
    assert counted(run2)["hit"] == USERS
    hit_examples = Counter(
        doc["user_id"]
        for doc in (orjson.loads(r.value) for r in run2.sink.records if r.topic == "examples")
        if doc["outcome"] == "hit"
    )
    assert set(hit_examples) == set(range(USERS)) and max(hit_examples.values()) <= 2
