"""The model contract on the real Triton: `pipeline run` with a topology that does not fit
the served model stops at start with exit 2 and one message naming the topology key, before
it consumes anything (nothing is dead-lettered, nothing committed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.audit import Ledger
from pipeline.devstack.topology import topology_on_stack
from pipeline.kafka_io import read_to_end
from pipeline.topology.schema import Topology
from tests.integration.harness import create_topics, produce_raw, run_pipeline_command

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"window": {"history_length": 8}},
            "window.history_length: 8, but model 'recommender' takes HISTORY of 16",
        ),
        ({"model": {"top_k": 50}}, "model.top_k: 50, but model 'recommender' returns 10 items"),
        ({"model": {"name": "no-such-model"}}, "model.name: 'no-such-model'"),
    ],
)
async def test_a_topology_that_does_not_fit_the_model_stops_at_start(
    stack, tmp_path: Path, sections, message
) -> None:
    data = topology_on_stack(stack, **sections)
    topology = Topology.model_validate(data)
    await create_topics(topology)
    await produce_raw(topology, [(b"1", b'{"not": "read"}', [])] * 5, Ledger())
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    done = run_pipeline_command("run", path)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline stopped: ") and message in last, last
    assert [r async for r in read_to_end(topology.broker, topology.sink.dead_letter_topic)] == []


async def test_the_served_models_queue_says_which_parameters_are_sent(stack) -> None:
    """The shipped model has a plain queue: Triton would ignore a request's priority and
    timeout, so the dispatcher leaves them out (they cost its Python backend per row). It
    declares UNKNOWN_ITEMS, so the dispatcher asks for it."""
    from pipeline.triton.contract import ReadParameters, fetch_served_model
    from pipeline.triton.streams import StreamPool

    topology = Topology.model_validate(topology_on_stack(stack))
    pool = StreamPool(topology.model.url, 1, topology.model.recycle_stream_after)
    try:
        served = await fetch_served_model(pool.stub, topology.model.name, "")
    finally:
        await pool.close()
    assert served.reads == ReadParameters(priority=False, timeout=False, unknown_items=True, item_keys=True)
