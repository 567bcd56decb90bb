"""Offsets are committed only after the sink's acknowledgement: with the sink held back,
the group's committed offsets must not move, however long the commit loop runs; once it is
let go they reach the end."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.audit import Ledger
from pipeline.runtime import PipelineRuntime
from tests.builders import keyed_event
from tests.integration.harness import committed_offsets, create_topics, fresh_topology, produce_raw

pytestmark = pytest.mark.integration


async def test_nothing_is_committed_while_the_sink_holds_back(stack) -> None:
    topology = fresh_topology(stack, source={"commit_interval_ms": 100})
    await create_topics(topology)
    runtime = PipelineRuntime(topology)
    release = asyncio.Event()
    write = runtime.sink.write

    async def held_back(batch):
        await release.wait()
        return await write(batch)

    runtime.sink.write = held_back  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await asyncio.wait_for(runtime.ready.wait(), 60)
    events = [keyed_event(event_id=f"e{i}", user_id=i % 50, item_id=3) for i in range(200)]
    coords = await produce_raw(topology, events, Ledger())
    await asyncio.sleep(2)  # twenty commit rounds with nothing acknowledged
    while_held = await committed_offsets(topology, range(4))
    release.set()
    for _ in range(100):
        if runtime.tracker.pending() == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    after = await committed_offsets(topology, range(4))
    stop.set()
    await asyncio.wait_for(task, 30)
    assert all(offset in (None, -1, 0) for offset in while_held.values()), while_held
    assert sum(o or 0 for o in after.values()) == len(coords)
