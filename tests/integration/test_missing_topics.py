"""A topology whose output or dead-letter topic does not exist: `pipeline run` stops at start
with exit 2 and one line naming the topic, before it consumes anything, instead of retrying
its first write for ever while /readyz says 200 (issue 24, item 2).

The embedded broker creates a topic when a client asks for it by name (Metadata, Produce):
the check lists the broker's topics instead, and the missing topic is still missing after."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import ensure_topics
from pipeline.topics_check import broker_topics
from pipeline.topology.schema import Topology
from tests.integration.harness import run_pipeline_command

pytestmark = pytest.mark.integration

EXIT_WITHIN_S = 45.0  # connection check, the topics check's wait for a late topic (5 s), start-up


@pytest.mark.parametrize("missing", ["topic", "dead_letter_topic"])
async def test_run_stops_at_start_naming_a_missing_output_topic(stack, tmp_path: Path, missing: str) -> None:
    data = topology_on_stack(stack)
    topology = Topology.model_validate(data)
    sink = topology.sink
    absent = getattr(sink, missing)
    made = [t for t in [*topology.source.topics, sink.topic, sink.dead_letter_topic] if t != absent]
    await ensure_topics(topology.broker, made)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))

    started = time.monotonic()
    done = run_pipeline_command("run", path, timeout_s=EXIT_WITHIN_S)
    took = time.monotonic() - started

    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"pipeline stopped: topic {absent} (sink.{missing}) does not exist on "
        f"{topology.broker.bootstrap_servers}: create it first"
    ), done.stderr[-2000:]
    assert sum(absent in line for line in lines) == 1, done.stderr[-2000:]  # said once
    assert took < EXIT_WITHIN_S
    assert absent not in await broker_topics(topology.broker)  # the check did not create it
