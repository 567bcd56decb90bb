"""The `--workers` supervisor (pipeline/workers.py) with stand-in workers: tiny Python
processes that exit as a worker would, so each rule is checked in a second or two (the real
`pipeline run` workers are in tests/faults/test_workers.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline import workers
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


@contextlib.contextmanager
def _sigterm_when(condition: Callable[[], bool], within_s: float) -> Iterator[list[float]]:
    """SIGTERM to this process (the supervisor under test, in the main thread) once
    ``condition`` holds, or after ``within_s`` anyway (the test then fails on what it
    finds); never after the block. Yields the times a SIGTERM was sent."""
    done, sent = threading.Event(), []

    def watch() -> None:
        deadline = time.monotonic() + within_s
        while not condition() and time.monotonic() < deadline:
            if done.wait(0.1):
                return
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        done.set()
        thread.join()


def _starts(tmp_path: Path) -> dict[str, int]:
    """How often each worker was started: each start appends a line to its file."""
    return {p.name: len(p.read_text().splitlines()) for p in tmp_path.iterdir() if p.name.isdigit()}


def _worker_that_exits_2(tmp_path: Path, times: int) -> list[str]:
    """Worker 0 exits 2 on its first ``times`` starts, then serves: the first run after
    1.5 s (the other workers are serving by then), a later one after 0.3 s (a
    misconfiguration found again at start). Every other worker serves: runs until SIGTERM,
    then exits 0."""
    return stand_in(
        f"""
        import os, pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        index = os.environ["PIPELINE_WORKER"]
        starts = pathlib.Path({str(tmp_path)!r}, index)
        with starts.open("a") as f:
            f.write(f"{{os.getpid()}}\\n")
        run = len(starts.read_text().splitlines())
        if index == "0" and run <= {times}:
            time.sleep(1.5 if run == 1 else 0.3)
            sys.exit(2)
        time.sleep(60)
        """
    )


def test_one_passing_exit_2_restarts_that_worker_and_the_others_keep_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway's passing fault, a SASL refusal seen once: worker 0 exits 2 once while
    workers 1 and 2 serve. Only worker 0 is started again; the others are never stopped;
    a SIGTERM later ends everything with 0 (that passing 2 is not the exit)."""
    monkeypatch.setattr(workers, "STEADY_S", 1.0)  # serving: up 1 s (60 s in production)
    caplog.set_level(logging.INFO, "pipeline.workers")
    with _sigterm_when(lambda: _starts(tmp_path).get("0", 0) >= 2, 20):
        assert supervise(TOPOLOGY, _worker_that_exits_2(tmp_path, times=1), 3) == 0
    assert _starts(tmp_path) == {"0": 2, "1": 1, "2": 1}
    assert "worker 0 exited 2 after the workers served: restarting it" in caplog.text


def test_an_exit_2_that_reproduces_on_restart_stops_every_worker_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A misconfiguration is the same on every start: worker 0 exits 2, is started once
    more, exits 2 again. Every worker stops and the supervisor exits 2 — within the first
    run, the backoff and the second run, not a crash loop."""
    monkeypatch.setattr(workers, "STEADY_S", 1.0)
    caplog.set_level(logging.INFO, "pipeline.workers")
    started = time.monotonic()
    with _sigterm_when(lambda: False, 20) as sent:  # a crash loop would be cut off here: exit 0
        code = supervise(TOPOLOGY, _worker_that_exits_2(tmp_path, times=100), 2)
    took = time.monotonic() - started
    assert code == EXIT_CONFIGURATION and not sent
    assert took < 1.5 + 1.0 + 0.3 + 3.0, took  # two runs, one backoff, the starts and the stop
    assert _starts(tmp_path) == {"0": 2, "1": 1}
    assert "worker 0 exited 2 again within 10 min (configuration): stopping every worker" in caplog.text
