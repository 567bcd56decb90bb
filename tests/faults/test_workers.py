"""`pipeline run --workers N` as a real process tree on the real broker and Triton: the
workers share the partitions, a killed worker is started again with nothing lost, a stop
drains every worker, and a configuration error stops them all at once instead of looping."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from pipeline import procfs
from pipeline.devstack.process import ChildProcess, free_ports
from pipeline.devstack.worker import topology_document
from pipeline.topology.schema import Topology
from tests.faults.harness import CaseResult, run_case, wait_for_output_after
from tests.integration.harness import ROOT, create_topics, fresh_topology


def _supervisor(topology: Topology, tmp_path: Path, workers: int) -> tuple[ChildProcess, int]:
    base = free_ports(2)
    data = topology_document(topology)
    data["operations"]["metrics_port"] = base
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = [sys.executable, "-m", "pipeline", "run", str(path), "--workers", str(workers)]
    return ChildProcess("supervisor", argv, tmp_path / "workers.log", cwd=ROOT), base


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return str(resp.read().decode())
    except (OSError, http.client.HTTPException):  # not listening yet (a self-connect echoes the request)
        return ""


def _worker_pids(supervisor: ChildProcess) -> list[int]:
    return procfs.children(supervisor.pid)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return procfs.stat(pid).state == "Z"


async def test_workers_share_the_partitions_and_a_killed_one_comes_back(stack, tmp_path) -> None:
    topology = fresh_topology(stack, source={"commit_interval_ms": 1000})
    await create_topics(topology)
    supervisor, base = _supervisor(topology, tmp_path, 2)
    supervisor.start()
    try:
        supervisor.wait_until(lambda: all(_get(base + i, "/readyz") for i in (0, 1)), 90, "workers ready")
        first_pids = _worker_pids(supervisor)
        assert len(first_pids) == 2

        async def fault(result: CaseResult) -> None:
            await asyncio.sleep(3)
            # both workers own partitions of the input topic (4 partitions, one group)
            for port in (base, base + 1):
                assert f'topic="{topology.source.topics[0]}"' in _get(port, "/metrics")
            os.kill(first_pids[1], signal.SIGKILL)
            result.fault_at = time.monotonic()
            before = result.ledger.recommendations
            result.recovered_at = await wait_for_output_after(result.ledger, before)

        result = await run_case(topology, 4000, 500, fault)
        print("\nFAULT " + result.line("worker SIGKILL under --workers 2"))
        assert result.audit["lost"] == 0, result.line("workers")
        assert result.audit["dead_letters"] == 0
        assert result.audit["duplicates"] <= 1000  # the killed worker's uncommitted second at most
        log = supervisor.log_path.read_text()
        assert "worker 1 exited with -9; restarting it in 1 s" in log
        await asyncio.to_thread(
            supervisor.wait_until, lambda: _get(base + 1, "/readyz") != "", 60, "restarted"
        )
        workers = _worker_pids(supervisor)
        assert len(workers) == 2 and first_pids[0] in workers

        supervisor.signal(signal.SIGTERM, group=False)
        assert await asyncio.to_thread(supervisor.proc.wait, 40) == 0  # type: ignore[union-attr]
        assert all(_gone(pid) for pid in workers), "a worker outlived its supervisor's stop"
        assert log.count("[worker 0]") > 0 and "[worker 1]" in log
    finally:
        supervisor.stop()


def test_a_configuration_error_stops_every_worker_with_exit_2(stack, tmp_path) -> None:
    """A model Triton does not serve: each worker exits 2; the supervisor does not restart
    them but stops too, with 2, well before any backoff could have looped."""
    topology = fresh_topology(stack, model={"name": "no-such-model"})
    asyncio.run(create_topics(topology))
    supervisor, _ = _supervisor(topology, tmp_path, 2)
    supervisor.start()
    try:
        started = time.monotonic()
        assert supervisor.proc is not None
        assert supervisor.proc.wait(90) == 2
        assert time.monotonic() - started < 60
        log = supervisor.log_path.read_text()
        assert "exited 2 (configuration): stopping every worker" in log
        assert "restarting it" not in log
        assert log.count("no-such-model") >= 1
    finally:
        supervisor.stop()
