"""The supervisor's exit-2 rule (pipeline/workers.py ``exit_2_stops_all``): one worker's
exit 2 stops every worker only when it reproduces — before any worker has served, or the
same worker's second exit 2 within EXIT_2_WINDOW_S, however long its runs lasted. Plain data
here; with real processes in tests/integration/test_workers_supervisor.py."""

from __future__ import annotations

from pipeline.workers import EXIT_2_WINDOW_S, STEADY_S, Worker, exit_2_stops_all

NOW = 10_000.0


def _failed(*exits_2_ago: float) -> Worker:
    """A worker that has just exited 2, and before that ``exits_2_ago`` seconds ago."""
    worker = Worker(0, ["true"], {})
    worker.exits_2_at = [NOW - ago for ago in exits_2_ago] + [NOW]
    return worker


def test_a_first_exit_2_after_the_workers_served_restarts_that_worker_alone() -> None:
    assert not exit_2_stops_all(_failed(), served=True, now=NOW)


def test_an_exit_2_before_any_worker_served_stops_every_worker() -> None:
    """At the start every worker meets a misconfiguration at once: no restart loop; so do
    workers that were never up long enough (all failing since the start)."""
    assert exit_2_stops_all(_failed(), served=False, now=NOW)


def test_a_second_exit_2_soon_after_the_restart_stops_every_worker() -> None:
    assert exit_2_stops_all(_failed(5.0), served=True, now=NOW)


def test_a_verdict_that_comes_late_in_each_run_still_reproduces() -> None:
    """A contract checked only after a slow Triton, a refusal at a reconnect: each run lasts
    longer than STEADY_S before its exit 2. The second one within the window stops all
    (counted per restart, it reset to one each time: a restart every 30 s for ever)."""
    assert exit_2_stops_all(_failed(3 * STEADY_S), served=True, now=NOW)


def test_exits_2_further_apart_than_the_window_are_each_a_first() -> None:
    worker = _failed(EXIT_2_WINDOW_S + 1)
    assert not exit_2_stops_all(worker, served=True, now=NOW)
    assert worker.exits_2_at == [NOW]  # the old one is forgotten: bounded


def test_others_waiting_out_an_outage_do_not_make_a_passing_exit_2_a_verdict() -> None:
    """Workers 1 and 2 in their backoff after a broker outage (exit 1), worker 0's confirmed
    but passing refusal: the fleet has served, so worker 0 is restarted, not everything
    stopped (the former rule asked whether another worker served at that moment)."""
    assert not exit_2_stops_all(_failed(), served=True, now=NOW)
