"""UserState on its own: restores that fail in any way end in one Fatal line instead of a
partition held for ever, a changelog round that fails is sent again before anyone is told
it was persisted, and a group that does not co-partition stops the process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.errors import Fatal
from pipeline.events import OutputRecord, SinkBatch
from pipeline.metrics import Metrics
from pipeline.state.histories import user_key
from pipeline.state.users import StateSettings, UserState
from pipeline.testing.ends import CapturedChangelog, CaptureSink


def state(tmp_path: Path, attempts: int = 2) -> tuple[UserState, CaptureSink, CapturedChangelog]:
    sink = CaptureSink("dlq")
    changelog = CapturedChangelog(sink, "histories")
    settings = StateSettings(tmp_path, 16, True, 1 << 20, 0, 1.0, attempts)
    return UserState(settings, Metrics(), changelog, sink.write, sink.acked_offset), sink, changelog


async def run_restores(users: UserState, timeout_s: float = 10.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(users.restore_loop(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while users.restoring and not loop.done() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        if loop.done():
            loop.result()
    finally:
        stop.set()
        await asyncio.wait_for(loop, 2) if not loop.done() else None


async def test_a_store_that_cannot_be_opened_is_retried_then_stops_with_one_line(tmp_path: Path) -> None:
    users, _, _ = state(tmp_path)
    (tmp_path / "histories").mkdir()
    (tmp_path / "histories" / "partition-0").write_text("not a directory")  # RocksDB cannot open it
    users.assigned({0})
    with pytest.raises(Fatal, match="restoring partition 0 failed 2 times"):
        await run_restores(users)


async def test_a_changelog_reset_on_the_last_attempt_does_not_hold_the_partition(tmp_path: Path) -> None:
    users, sink, _ = state(tmp_path, attempts=1)
    users.assigned({0})
    await run_restores(users)
    users.extend(1, [(10, 5)], 0)
    await asyncio.wait_for(users.writer.round(), 2)  # type: ignore[union-attr]
    users.close()
    sink.logs.clear()  # the changelog deleted and made again, empty
    again, _, changelog = state(tmp_path, attempts=1)
    changelog.sink.logs[("histories", 0)] = []
    again.changelog = changelog
    again.assigned({0})
    await run_restores(again)  # the store reached offset 0, the topic has nothing: reset, then restored
    assert again.restoring == set() and again.stores[0].history(1) == ()
    again.close()


async def test_a_failed_changelog_round_is_sent_again_before_its_waiters_return(tmp_path: Path) -> None:
    users, sink, _ = state(tmp_path)
    users.assigned({0})
    await run_restores(users)
    fail = [True]

    async def flaky(batch: SinkBatch) -> list[OutputRecord]:
        if fail:
            fail.clear()
            raise RuntimeError("send round ended before its answer")
        return await sink.write(batch)

    assert users.writer is not None
    users.writer._write = flaky
    users.extend(1, [(10, 5)], 0)
    waiter = asyncio.create_task(users.persisted())
    stop = asyncio.Event()
    with pytest.raises(RuntimeError):
        await users.writer.run(stop)  # the first round fails: the loop's supervisor restarts it
    assert not waiter.done()
    rerun = asyncio.create_task(users.writer.run(stop))
    await asyncio.wait_for(waiter, 5)
    stop.set()
    await rerun
    assert [rec.key for rec in sink.records] == [user_key(1)]  # the lost round's history, sent
    users.close()


async def test_partitions_held_in_some_input_topics_only_stop_the_process(tmp_path: Path) -> None:
    users, _, _ = state(tmp_path)
    users.assigned({0, 1}, split={1})
    with pytest.raises(Fatal, match=r"partitions \[1\] are held for some input topics only"):
        await run_restores(users)
