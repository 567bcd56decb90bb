"""`pipeline run --workers N`: N worker processes of one topology in one consumer group.

Kafka's group protocol shares the partitions among them (the partition count bounds the
useful number); each worker is an ordinary `pipeline run` with its own event loop, so the
per-event Python work spreads over the machine's cores. This process only supervises:

- worker i serves /metrics, /healthz and /readyz on ``operations.metrics_port + i`` (none
  when the port is 0) and logs with ``worker: i``;
- a worker that exits on its own is started again after a backoff (1 s doubling to 30 s,
  reset once it has run for a minute) — except for exit 2 (a bad configuration, a refused
  credential, a model that does not fit): every worker would hit it, so all stop and this
  process exits 2 with that message, rather than crash-loop;
- SIGTERM or SIGINT is passed to every worker, which drain and commit; the exit code is 0
  when all stopped cleanly, else the highest worker code. Workers left running past the
  drain bound are killed. A worker dies with this process (PR_SET_PDEATHSIG), so a killed
  supervisor leaves no orphan consuming.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import wiring
from pipeline.topology.schema import Topology

log = logging.getLogger("pipeline.workers")

WORKER_ENV = "PIPELINE_WORKER"  # the worker's index, for its logs
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STEADY_S = 60.0  # a worker up this long starts its backoff over
POLL_S = 0.2
EXIT_CONFIGURATION = 2
STOP_MARGIN_S = 10.0  # past a worker's own stop bound (drain + its close margin)


def _die_with_parent(supervisor: int) -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the supervisor dies
    except OSError:
        pass  # not Linux: a killed supervisor leaves its workers to be stopped by hand
    if os.getppid() != supervisor:  # it died before prctl took effect: nobody would stop us
        os._exit(1)


@dataclass
class Worker:
    index: int
    command: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row without a steady run
    restart_at: float | None = None
    codes: list[int] = field(default_factory=list)

    def start(self) -> bool:
        """False if it could not be started (no memory or processes left for a fork): the
        caller tries again after a backoff, the running workers go on."""
        try:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only; it passes one on
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("worker %d could not be started: %r", self.index, exc)
            return False
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)
        return True

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


def worker_command(topology_path: Path, log_format: str, log_level: str | None) -> list[str]:
    command = [sys.executable, "-m", "pipeline", "run", str(topology_path), "--log-format", log_format]
    return command + (["--log-level", log_level] if log_level else [])


def worker_env(index: int, topology: Topology, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env[WORKER_ENV] = str(index)
    endpoint = wiring.operations_endpoint(topology)
    env["PIPELINE_METRICS_PORT"] = str(endpoint.port + index if endpoint else 0)
    return env


def supervise(topology: Topology, command: list[str], count: int) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT or a configuration error; the exit code."""
    workers = [Worker(i, command, worker_env(i, topology, dict(os.environ))) for i in range(count)]
    stopping: list[signal.Signals] = []

    def on_signal(signum: int, _frame: object) -> None:
        sig = signal.Signals(signum)
        log.info("%s: stopping %d workers", sig.name, count)
        stopping.append(sig)
        for worker in workers:  # a second signal is passed on too: the workers exit at once
            worker.signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            _start(worker, stopping, time.monotonic())
        _watch(workers, stopping)
        if not stopping:  # _watch ends early only on a configuration error: the others stop too
            for worker in workers:
                worker.signal(signal.SIGTERM)
        code = _wait_all(workers, topology)
        # a worker's configuration error is the exit, whatever the others' stop made of theirs
        return EXIT_CONFIGURATION if EXIT_CONFIGURATION in (c for w in workers for c in w.codes) else code
    finally:
        for worker in workers:  # never leave one behind, whatever happened here
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(worker: Worker, stopping: list[signal.Signals], now: float) -> None:
    """Start ``worker`` unless a stop came; one that came while it started reaches it too."""
    if stopping:
        return
    if not worker.start():
        _backoff(worker, now)
    elif stopping:
        worker.signal(signal.SIGTERM)


def _backoff(worker: Worker, now: float) -> float:
    delay = BACKOFF_S[min(worker.failures, len(BACKOFF_S) - 1)]
    worker.failures += 1
    worker.restart_at = now + delay
    return delay


def _watch(workers: list[Worker], stopping: list[signal.Signals]) -> None:
    """Restart workers that exit on their own until a stop, or until one exits 2."""
    while not stopping:
        now = time.monotonic()
        for worker in workers:
            if stopping:
                break  # what exits from now on is the stop's: _wait_all reads it
            if worker.proc is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    _start(worker, stopping, now)
                continue
            code = worker.proc.poll()
            if code is None:
                if worker.failures and now - worker.started_at > STEADY_S:
                    worker.failures = 0
                continue
            worker.codes.append(code)
            worker.proc = None
            if code == EXIT_CONFIGURATION:
                log.error("worker %d exited 2 (configuration): stopping every worker", worker.index)
                return
            delay = _backoff(worker, now)
            log.error("worker %d exited with %d; restarting it in %.0f s", worker.index, code, delay)
        time.sleep(POLL_S)


def _wait_all(workers: list[Worker], topology: Topology) -> int:
    """Each running worker's exit code, waited for within its stop bound, else killed."""
    bound = wiring.runtime_settings(topology).drain_timeout_s + STOP_MARGIN_S
    deadline = time.monotonic() + bound
    code = 0
    for worker in workers:
        if worker.proc is None:
            continue
        try:
            exit_code = worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d still running %.0f s after the stop: killed", worker.index, bound)
            worker.proc.kill()
            exit_code = worker.proc.wait()
        worker.codes.append(exit_code)
        worker.proc = None
        code = max(code, exit_code if exit_code >= 0 else 128 - exit_code)
    return code
