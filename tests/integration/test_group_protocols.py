"""A member that cannot join its group because the members in it assign differently (an
earlier release offering round robin only, with `source.offer_round_robin` off): one line
naming the group and the setting, and the member already in the group keeps its
partitions (the broker refuses the join without a rebalance)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from pipeline import kafka_clients
from pipeline.errors import SourceFailed
from pipeline.runtime import PipelineRuntime
from tests.integration.harness import create_topics, fresh_topology

pytestmark = pytest.mark.integration


async def test_a_group_of_an_earlier_release_is_named_in_one_line(stack) -> None:
    topology = fresh_topology(stack)
    assert topology.source.offer_round_robin is False  # the stack's tuning
    await create_topics(topology)
    earlier = kafka_clients.consumer(
        topology.broker,
        *topology.source.topics,
        client_suffix="-earlier",
        group_id=topology.source.group_id,
        session_timeout_ms=topology.source.session_timeout_ms,
        heartbeat_interval_ms=topology.source.heartbeat_interval_ms,
        partition_assignment_strategy=(RoundRobinPartitionAssignor,),
    )
    await earlier.start()
    try:
        while not earlier.assignment():
            await earlier.getmany(timeout_ms=100)
        held = set(earlier.assignment())

        async def keep_polling() -> None:
            while True:
                await earlier.getmany(timeout_ms=100)

        poller = asyncio.create_task(keep_polling())
        with pytest.raises(SourceFailed) as failed:
            await asyncio.wait_for(PipelineRuntime(topology).run(asyncio.Event()), 30)
        message = str(failed.value)
        assert topology.source.group_id in message and "source.offer_round_robin" in message
        assert "\n" not in message
        assert set(earlier.assignment()) == held  # not moved by the refused join
        assert not poller.done()
        poller.cancel()
    finally:
        await earlier.stop()
