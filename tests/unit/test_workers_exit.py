"""The supervisor's exit-2 rule (pipeline/workers.py ``exit_2_stops_all``): one worker's
exit 2 stops every worker only when it reproduces — no other worker serving, or the same
worker's second exit 2 in a row. Plain data here; with real processes in
tests/integration/test_workers_supervisor.py."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import workers
from pipeline.workers import Worker, exit_2_stops_all

NOW = 1000.0


class _Proc:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


def _worker(index: int, up_s: float | None, code: int | None = None, exits_2: int = 0) -> Worker:
    """``up_s`` None: not running (waiting for its restart)."""
    worker = Worker(index, ["true"], {})
    if up_s is not None:
        worker.proc = _Proc(code)  # type: ignore[assignment]
        worker.started_at = NOW - up_s
    worker.exits_2 = exits_2
    return worker


@pytest.fixture(autouse=True)
def steady(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "STEADY_S", 60.0)


def test_a_first_exit_2_while_others_serve_restarts_that_worker_alone() -> None:
    failed = _worker(0, None, exits_2=1)
    assert not exit_2_stops_all(failed, [failed, _worker(1, 300.0), _worker(2, 5.0)], NOW)


def test_a_second_exit_2_in_a_row_stops_every_worker() -> None:
    failed = _worker(0, None, exits_2=2)
    assert exit_2_stops_all(failed, [failed, _worker(1, 300.0), _worker(2, 300.0)], NOW)


@pytest.mark.parametrize(
    "others",
    [
        pytest.param([{"up_s": 5.0}, {"up_s": 5.0}], id="at-the-start"),
        pytest.param([{"up_s": None}, {"up_s": None}], id="the-others-down"),
        pytest.param([{"up_s": 300.0, "code": 2}], id="another-just-exited"),
    ],
)
def test_an_exit_2_with_no_other_worker_serving_stops_every_worker(others: list[dict[str, Any]]) -> None:
    """At the start every worker meets a misconfiguration at once: no restart loop."""
    failed = _worker(0, None, exits_2=1)
    fleet = [failed, *(_worker(i + 1, **o) for i, o in enumerate(others))]
    assert exit_2_stops_all(failed, fleet, NOW)
