"""`pipeline redrive` on the real broker with a pipeline running: a reason whose cause is not
fixed sends its events straight back to the dead-letter topic. The re-drive ends at the
topic's end as it was at start, having re-driven exactly the dead letters present then; the
new ones wait for the next run. Before the end was fixed it followed the moving high
watermark and re-drove its own new dead letters without end. And the problems at start are
one line each: a dead-letter topic that does not exist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from pipeline.audit import Ledger
from pipeline.cli import main
from pipeline.devstack.topology import topology_on_stack
from pipeline.redrive import RedriveError, redrive
from pipeline.runtime import PipelineRuntime
from pipeline.testing.builders import event_json
from pipeline.topology.schema import Topology
from tests.integration.harness import create_topics, produce_raw, read_values

pytestmark = pytest.mark.integration

POISON = 12  # events of a type the pipeline does not know: dead-lettered unknown_type each time
RATE = 12.0  # re-sends per second: the round takes a second, the pipeline answers well within it


async def wait_for_dead_letters(topology: Topology, count: int, timeout_s: float = 60) -> list:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        dead = await read_values(topology, topology.sink.dead_letter_topic)
        if len(dead) >= count or asyncio.get_running_loop().time() > deadline:
            return dead
        await asyncio.sleep(0.3)


async def test_a_redrive_whose_cause_is_not_fixed_ends_at_the_end_it_started_with(stack) -> None:
    topology = Topology.model_validate(topology_on_stack(stack))
    await create_topics(topology)
    stop = asyncio.Event()
    runtime = PipelineRuntime(topology)
    pipeline_task = asyncio.create_task(runtime.run(stop))
    try:
        await asyncio.wait_for(runtime.ready.wait(), 60)
        poison = [
            (str(u).encode(), event_json(event_id=f"p{u}", user_id=u, type="share"), [])
            for u in range(POISON)
        ]
        await produce_raw(topology, poison, Ledger())
        first = await wait_for_dead_letters(topology, POISON)
        assert len(first) == POISON
        originals = {f"{d.topic}:{d.partition}:{d.offset}" for d in first}

        # The pipeline keeps running: each re-sent event is dead-lettered again at once.
        report = await asyncio.wait_for(redrive(topology, ["unknown_type"], rate=RATE), 45)
        assert report["unknown_type"] == {"redriven": POISON}

        dead = await wait_for_dead_letters(topology, 2 * POISON)
        assert len(dead) == 2 * POISON  # each re-sent once: its own new dead letter, no more
        assert all(dict(d.headers)["dlq.reason"] == b"unknown_type" for d in dead)
        inputs = await read_values(topology, topology.source.topics[0])
        sent_back = [
            dict(r.headers)["redrive.from"].decode() for r in inputs if "redrive.from" in dict(r.headers)
        ]
        assert sorted(sent_back) == sorted(originals)  # exactly those present at start, once each

        # The new dead letters are the next run's (counted here, not sent).
        again = await asyncio.wait_for(redrive(topology, ["unknown_type"], dry_run=True), 45)
        assert again["unknown_type"] == {"redriven": POISON}
    finally:
        stop.set()
        await asyncio.wait_for(pipeline_task, 60)


async def test_a_dead_letter_topic_that_does_not_exist_is_refused(stack) -> None:
    topology = Topology.model_validate(topology_on_stack(stack))  # no topic created
    with pytest.raises(RedriveError, match=r"^sink\.dead_letter_topic: no topic 'dlq-\w+' on the broker$"):
        await asyncio.wait_for(redrive(topology, ["unknown_type"], dry_run=True), 30)


def test_the_command_says_so_in_one_line(stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = topology_on_stack(stack)
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(data))
    assert main(["redrive", str(file), "--reason", "unknown_type"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    dlq = data["sink"]["dead_letter_topic"]
    assert err == f"pipeline redrive: {file}: sink.dead_letter_topic: no topic {dlq!r} on the broker\n"
