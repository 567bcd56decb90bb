"""The `--workers` supervisor (pipeline/workers.py) with stand-in workers: tiny Python
processes that exit as a worker would, so each rule is checked in a second or two (the real
`pipeline run` workers are in tests/faults/test_workers.py)."""

from __future__ import annotations

import sys
import textwrap

from pipeline.topology.schema import Topology
from pipeline.workers import EXIT_CONFIGURATION, supervise

TOPOLOGY = Topology.model_validate(
    {
        "name": "workers",
        "source": {"topics": ["in"], "group_id": "g", "drain_timeout_ms": 2000},
        "model": {"name": "m"},
        "sink": {"topic": "out", "dead_letter_topic": "dlq"},
    }
)


def stand_in(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


def test_a_configuration_error_is_the_exit_even_when_another_worker_stops_uncleanly() -> None:
    """Worker 0 exits 2 at once; worker 1, told to stop, exits 3 (work unfinished). The
    supervisor stops both and exits 2: the configuration is what needs fixing."""
    command = stand_in(
        """
        import os, signal, sys, time
        if os.environ["PIPELINE_WORKER"] == "0":
            sys.exit(2)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        time.sleep(30)
        """
    )
    assert supervise(TOPOLOGY, command, 2) == EXIT_CONFIGURATION


def test_each_worker_gets_its_index_and_metrics_port(tmp_path) -> None:
    topology = TOPOLOGY.model_copy(
        update={"operations": TOPOLOGY.operations.model_copy(update={"metrics_port": 9400})}
    )
    command = stand_in(
        f"""
        import os, pathlib, signal, sys, time
        index = os.environ["PIPELINE_WORKER"]
        pathlib.Path({str(tmp_path)!r}, index).write_text(os.environ["PIPELINE_METRICS_PORT"])
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        time.sleep(0.5)
        sys.exit(2 if index == "0" else 0)  # 2: the supervisor stops the others and exits
        """
    )
    assert supervise(topology, command, 3) == EXIT_CONFIGURATION
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"0": "9400", "1": "9401", "2": "9402"}
