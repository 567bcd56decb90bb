"""`pipeline run --workers N`: N worker processes of one topology in one consumer group.

Kafka's group protocol shares the partitions among them (the partition count bounds the
useful number); each worker is an ordinary `pipeline run` with its own event loop, so the
per-event Python work spreads over the machine's cores. This process only supervises:

- worker i serves /metrics and the probes (/livez, /startupz, /readyz) on
  ``operations.metrics_port + i`` (none when the port is 0) and logs with ``worker: i``;
- a worker that exits on its own is started again after a backoff (1 s doubling to 30 s,
  reset once it has run for a minute, STEADY_S);
- exit 2 says a bad configuration, a refused credential, a model that does not fit. A
  worker exits 2 only for a verdict it has confirmed (a refusal seen on two attempts; what
  can pass — a gateway's UNKNOWN, one refused handshake — is retried and ends in exit 1),
  but one worker's verdict must not take down the others once the fleet has served. So an
  exit 2 stops every worker, and this process exits 2 with that message rather than
  crash-loop, when it *reproduces*: either no worker has served yet (none up STEADY_S: at
  the start, all hit the same misconfiguration at once), or the same worker exits 2 a
  second time within EXIT_2_WINDOW_S, however long each run lasted (a verdict can come late:
  a contract checked after a slow Triton, a refusal at a reconnect). A misconfiguration is
  the same on every start, so it is found again; a passing condition is not. Otherwise the
  worker is restarted like any other exit and the others are left alone, whether they serve
  or are waiting out a shared outage. The bound on a misconfiguration found once the fleet
  served: that worker's two runs and one backoff between them (30 s at most), then the
  stop;
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
EXIT_2_WINDOW_S = 600.0  # a worker's second exit 2 within this reproduces the first
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
    exits_2_at: list[float] = field(default_factory=list)  # its exits 2 within EXIT_2_WINDOW_S
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


def exit_2_stops_all(worker: Worker, served: bool, now: float) -> bool:
    """``worker`` just exited 2 (``worker.exits_2_at`` holds it): whether that stops every
    worker (it reproduces: no worker has ``served`` yet, or it is this worker's second exit 2
    within EXIT_2_WINDOW_S) rather than restarting it alone."""
    worker.exits_2_at = [t for t in worker.exits_2_at if now - t <= EXIT_2_WINDOW_S]
    return len(worker.exits_2_at) >= 2 or not served


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
        configuration = _watch(workers, stopping)
        if configuration:  # a reproduced exit 2: the others stop too
            for worker in workers:
                worker.signal(signal.SIGTERM)
        codes = _wait_all(workers, topology)
        # A configuration error is the exit, whatever the others' stop made of theirs (a
        # worker's verdict reached as the stop came counts too); an exit 2 that passed, its
        # worker restarted, does not.
        if configuration or EXIT_CONFIGURATION in codes:
            return EXIT_CONFIGURATION
        return max((c if c >= 0 else 128 - c for c in codes), default=0)
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


def _watch(workers: list[Worker], stopping: list[signal.Signals]) -> bool:
    """Restart workers that exit on their own until a stop (False), or until an exit 2
    reproduces (True: see ``exit_2_stops_all``)."""
    served = False  # a worker has been up STEADY_S: past the checks every start makes
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
                if now - worker.started_at > STEADY_S:
                    served = True
                    worker.failures = 0
                continue
            worker.codes.append(code)
            worker.proc = None
            if code != EXIT_CONFIGURATION:
                delay = _backoff(worker, now)
                log.error("worker %d exited with %d; restarting it in %.0f s", worker.index, code, delay)
                continue
            worker.exits_2_at.append(now)
            if exit_2_stops_all(worker, served, now):
                again = f" again within {EXIT_2_WINDOW_S / 60:.0f} min" if len(worker.exits_2_at) >= 2 else ""
                log.error("worker %d exited 2%s (configuration): stopping every worker", worker.index, again)
                return True
            delay = _backoff(worker, now)
            log.error(
                "worker %d exited 2 after the workers served: restarting it in %.0f s; a second "
                "exit 2 within %.0f min stops every worker",
                worker.index,
                delay,
                EXIT_2_WINDOW_S / 60,
            )
        time.sleep(POLL_S)
    return False


def _wait_all(workers: list[Worker], topology: Topology) -> list[int]:
    """Each running worker's exit code, waited for within its stop bound, else killed."""
    bound = wiring.runtime_settings(topology).drain_timeout_s + STOP_MARGIN_S
    deadline = time.monotonic() + bound
    codes = []
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
        codes.append(exit_code)
    return codes
