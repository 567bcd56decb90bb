"""A guarded rollout on the real stack: `pipeline run` (a real process) serves an experiment
whose treatment arm is a deliberately bad version (random scores) against the trained
model (the session stack's, copied), 50/50, on the session's broker and a Triton of its own
serving both versions. The
guard stops the treatment once both arms have its minimum of judged outcomes; from then
on every recommendation comes from the control arm, and nothing is lost."""

from __future__ import annotations

import itertools
import re
import shutil
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from pipeline.devstack.stack import TRAINING_EVENTS, EmbeddedStack
from pipeline.devstack.topology import topology_on_stack
from pipeline.devstack.triton import EmbeddedTriton
from pipeline.devstack.worker import PipelineProcess
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.train import train_and_write
from pipeline.topology.schema import Topology
from tests.faults.harness import CaseResult, run_case
from tests.integration.harness import read_values

pytestmark = pytest.mark.integration

CONFIG = GeneratorConfig()  # the world the session stack's model was trained on
MIN_OUTCOMES = 300
EVENTS = 6_000
RATE = 1_500.0  # events a second: a judged outcome per user every second or so


def experiment_topology(stack: EmbeddedStack, triton_url: str) -> Topology:
    data = topology_on_stack(stack)
    data["model"]["url"] = triton_url
    arms = [
        {"id": "control", "version": "1", "share": 0.5},
        {"id": "treatment", "version": "2", "share": 0.5},
    ]
    guard = {"min_outcomes": MIN_OUTCOMES, "margin": 0.02, "interval_ms": 250}
    data["experiment"] = {"id": "guarded-rollout", "arms": arms, "guard": guard}
    return Topology.model_validate(data)


async def test_the_guard_stops_a_random_version_and_the_control_serves_on(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(stack.model_repository / "recommender" / "1", repository / "recommender" / "1")
    # the events after the ones it was trained on; a random version on the same catalogue
    live = list(
        itertools.islice(EventGenerator(CONFIG).events(TRAINING_EVENTS + EVENTS), TRAINING_EVENTS, None)
    )
    assert train_and_write(live, repository, CONFIG.items, kind="random").version == 2
    triton = EmbeddedTriton(tmp_path / "triton", repository)
    with triton.running(triton.ready, 120):
        topology = experiment_topology(stack, triton.grpc_url)
        pipeline = PipelineProcess(topology, tmp_path)
        pipeline.start_ready()
        try:
            result = await run_case(topology, EVENTS, RATE, _no_fault, events=live)  # stamped now
            metrics = pipeline.metrics()
        finally:
            pipeline.stop()
    log = pipeline.log_path.read_text()
    assert result.audit["lost"] == 0 and result.audit["dead_letters"] == 0, result.line("guard")
    stopped = re.search(
        r"arm treatment \(version 2\) stopped \(hit_rate\): hit rate (\S+) \((\d+) judged\)", log
    )
    quality = [line for line in metrics.splitlines() if line.startswith("pipeline_outcomes_total")]
    assert stopped, "\n".join(quality) + log[-1000:]
    assert int(stopped[2]) < MIN_OUTCOMES + 2 * RATE * 0.25  # judged within an interval of the bound
    assert 'pipeline_experiment_arm_serving{arm="treatment",version="2"} 0.0' in metrics
    assert 'pipeline_experiment_arm_stops_total{arm="treatment",reason="hit_rate"} 1.0' in metrics

    outputs = [orjson.loads(r.value) for r in await read_values(topology, topology.sink.topic)]
    assert len(outputs) == result.audit["recommendations"]
    served = [(o["emitted_at_ms"], o["model"]["arm"], o["model"]["version"]) for o in outputs]
    assert {(arm, v) for _, arm, v in served} == {("control", "1"), ("treatment", "2")}
    # the stop's log line, on the wall clock of the outputs' emitted_at_ms (the same machine)
    stop_line = next(line for line in log.splitlines() if "stopped (hit_rate)" in line)
    stop_ms = datetime.strptime(stop_line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp() * 1000
    after = [s for s in served if s[0] > stop_ms + 1_000]  # batches in flight at the stop are done
    assert len(after) > EVENTS / 4, (len(after), stop_line)
    assert {(arm, v) for _, arm, v in after} == {("control", "1")}


async def _no_fault(_result: CaseResult) -> None:
    """No fault: the bad arm is the case."""
