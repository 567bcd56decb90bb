"""The assembled runtime, in process, on the testing kit's ends (pipeline/testing): the
production graph from parse to finish, with no broker and no Triton."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from pipeline import errors
from pipeline.testing import FakeTriton, run_to_end, running, topology
from pipeline.testing.builders import input_record, raw_record
from pipeline.triton.contract import ModelContractError


def inputs(count: int, users: int = 10, partitions: int = 2) -> list:
    return [
        input_record(partition=i % partitions, key=str(i % users).encode(), user_id=i % users, item_id=i)
        for i in range(count)
    ]


async def test_every_input_is_answered_or_dead_lettered_and_committed_to_the_end() -> None:
    records = inputs(200)
    records[17] = raw_record(0, partition=1, timestamp_ms=records[17].timestamp_ms, value=b"{oops")
    run = await run_to_end(topology(), records)
    assert run.lost() == [] and run.duplicates() == 0
    assert run.sink.dead_letter_reasons() == ["malformed_json"]
    assert run.source.committed == {("interactions", 0): 100, ("interactions", 1): 100}
    for doc in run.sink.recommendations():  # the model never names a history item
        assert len(doc["items"]) == 10


async def test_nothing_is_committed_while_the_sink_holds_back() -> None:
    async with running(topology()) as run:
        run.sink.hold()
        run.source.add(inputs(100))
        await run.until(lambda: run.sink.entered > 0)  # the held sink has work
        await asyncio.sleep(0.3)  # fifteen commit rounds with nothing acknowledged
        held_commits = [offset for commit in run.source.commits for offset in commit.values()]
        run.sink.release()
        await run.settled()
    assert set(held_commits) <= {0}
    assert run.source.committed == {("interactions", 0): 50, ("interactions", 1): 50}
    assert run.lost() == []


async def test_a_null_key_is_accepted_unless_required() -> None:
    keyless = [input_record(user_id=5, item_id=1)]
    run = await run_to_end(topology(), keyless)
    assert len(run.sink.recommendations()) == 1
    strict = await run_to_end(topology(validation={"require_key": True}), keyless)
    assert strict.sink.dead_letter_reasons() == ["missing_key"]


async def test_a_duplicate_event_in_one_window_is_coalesced_and_counted() -> None:
    same = dict(event_id="dup-1", user_id=42, item_id=7)
    other = dict(event_id="dup-2", user_id=42, item_id=8)
    records = [input_record(**same), input_record(**same), input_record(**other)]
    run = await run_to_end(topology(window={"max_ms": 200, "max_events": 10_000}), records)
    [doc] = run.sink.recommendations()
    assert sorted(s["event_id"] for s in doc["sources"]) == ["dup-1", "dup-1", "dup-2"]
    assert {7, 8}.isdisjoint(item["item_id"] for item in doc["items"])
    assert run.runtime.metrics.duplicate_events._value.get() == 1


async def test_unavailable_answers_are_retried_and_every_input_still_answered() -> None:
    triton = FakeTriton()
    triton.fail_next(errors.ServerUnavailable("fake: down"), times=2)
    run = await run_to_end(topology(), inputs(50), triton)
    assert run.lost() == [] and run.sink.dead_letters() == []
    assert len(triton.requests) >= 3  # the failed attempts, then the answers


async def test_a_rebalance_while_the_sink_holds_back_loses_nothing() -> None:
    """Revoked while its outputs wait for the broker: the drain times out, the partition is
    re-read from its commit by the next generation, the stale work is not committed."""
    t = topology(source={"drain_timeout_ms": 200, "commit_interval_ms": 20})
    async with running(t) as run:
        run.sink.hold()
        run.source.add(inputs(60))
        await run.until(lambda: run.sink.entered > 0)
        both = set(run.source.logs)
        await run.source.rebalance(assigned=both)  # as a member rejoining
        run.sink.release()
        await run.settled()
    assert run.lost() == []
    assert run.duplicates() <= 60  # at most each input once more
    assert run.source.committed == {("interactions", 0): 30, ("interactions", 1): 30}


async def test_backpressure_bounds_what_is_in_flight_while_the_sink_is_stuck() -> None:
    t = topology(source={"credits": {"high_watermark": 40, "low_watermark": 20}, "max_poll_records": 10})
    in_flight: list[int] = []
    async with running(t) as run:
        run.sink.hold()
        run.source.add(inputs(400))
        for _ in range(30):
            in_flight.append(run.runtime.partitions.in_flight)
            await asyncio.sleep(0.01)
        run.sink.release()
        await run.settled()
    assert max(in_flight) <= 40 + 10  # the watermark, overshot by at most one poll
    assert run.lost() == []


async def test_a_model_that_does_not_fit_stops_the_start_having_consumed_nothing() -> None:
    small = FakeTriton(max_batch_size=8)  # the topology sends up to 128 rows
    with pytest.raises(ModelContractError, match="max_batch_size 8"):
        async with running(topology(), inputs(10), small):
            pass
    assert small.requests == []


async def test_the_outputs_name_their_inputs_and_the_model() -> None:
    run = await run_to_end(topology(), [input_record(user_id=3, item_id=9, event_id="e-9")])
    [record] = run.sink.records
    doc = orjson.loads(record.value)
    assert record.key == b"3" and doc["user_id"] == 3
    assert [s["event_id"] for s in doc["sources"]] == ["e-9"]
    assert doc["model"]["name"] == "recommender"


async def test_history_items_the_model_does_not_know_never_block_a_user() -> None:
    """A product newer than the model: ignored by the model and counted, never refused; the
    users who touched it keep being recommended in later windows."""
    triton = FakeTriton(items=1_000)
    t = topology(window={"max_ms": 20})
    async with running(t, triton=triton) as run:
        for round_ in range(3):  # user u touches a new product first, known ones after
            item = (5_000 + round_) if round_ == 0 else round_
            run.source.add(
                input_record(partition=u % 2, key=str(u).encode(), user_id=u, item_id=item) for u in range(20)
            )
            await run.settled()
    assert run.lost() == [] and run.sink.dead_letters() == []
    answered_users = [doc["user_id"] for doc in run.sink.recommendations()]
    assert sorted(set(answered_users)) == list(range(20)) and len(answered_users) >= 60
    counted = run.runtime.metrics.unknown_history_items.labels("recommender")._value.get()
    assert counted >= 20 * 3  # each user's history holds the new product in each round


async def test_a_refused_batch_is_split_to_find_its_bad_rows_within_a_bound() -> None:
    """A model that refuses rows naming some items: one bad row in a batch of 64 is found
    with about 2 log2(64) extra requests, its 63 neighbours answered; many bad rows stop at
    the bound, and what is still refused then is dead-lettered, nothing lost."""
    one_window = {"max_ms": 300, "max_events": 10_000}

    async def refused(bad_users: set[int], bound: int) -> tuple[list[str], int, int]:
        triton = FakeTriton()
        triton.refused_items = {999}
        t = topology(window=one_window, model={"max_split_requests": bound})
        records = [input_record(user_id=u, item_id=999 if u in bad_users else u) for u in range(64)]
        run = await run_to_end(t, records, triton)
        assert run.lost() == []
        return run.sink.dead_letter_reasons(), len(run.sink.recommendations()), len(triton.requests)

    reasons, answered, requests = await refused({17}, bound=32)
    assert reasons == ["invalid_argument"] and answered == 63
    assert requests <= 1 + 2 * 6  # the batch, then two halves per level down to one row
    reasons, answered, requests = await refused(set(range(0, 64, 3)), bound=8)
    assert requests <= 1 + 8  # the bound holds however many rows are bad
    assert len(reasons) + answered == 64 and set(reasons) == {"invalid_argument"}
