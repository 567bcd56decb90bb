"""Child processes of the embedded stack: started in their own process group, stopped by
PID (never by name), and stopped on interpreter exit if the owner forgot; with
``die_with_parent``, also when the owner is killed (SIGKILL runs no atexit)."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

# A child's watchdog (die_with_parent): a process of its own that reads its stdin, a pipe
# from the owner, to its end, which comes when the owner closes it or dies however it dies
# (SIGKILL included), and then stops the child's whole process group: TERM, then KILL after
# the grace. A parent-death signal (prctl) would reach the child alone, not Triton's
# backend stubs, which outlived it by minutes when tried.
WATCHDOG = """
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
try:
    os.killpg(pgid, signal.SIGCONT)
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        os.killpg(pgid, 0)
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
except ProcessLookupError:
    pass
"""
WATCHDOG_GRACE_S = 10.0


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports this process has handed out: two picks made before either port is bound must not
# collide (random picks from ~12,800 ports would, about once in 12,800 pairs).
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except (OSError, OverflowError):  # taken, or past 65535 (a run from a high pick)
            return False
        return True


def _claim(first: int, count: int) -> bool:
    run = range(first, first + count)
    if any(port in _handed_out for port in run) or not all(_bindable(port) for port in run):
        return False
    _handed_out.update(run)
    return True


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range and
    not handed out before by this process. A port from inside the range can be taken by a
    client's own connect as its source port (a readiness poll before the server binds meets
    itself and holds the port), and the server then fails to bind: seen as a worker
    crash-looping on "address already in use" in a clean-clone CI run."""
    low, high = 20_000, _ephemeral_low() - count + 1  # the run ends below the range
    for _ in range(100) if high - low > 1_000 else ():
        first = random.randrange(low, high)
        if _claim(first, count):
            return first
    for _ in range(100):  # a machine whose ephemeral range starts low: the kernel's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            first = int(sock.getsockname()[1])
        if _claim(first, count):
            return first
    raise RuntimeError(f"no run of {count} free ports found in 200 tries")


def free_port() -> int:
    return free_ports(1)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class ChildProcess:
    """One long-running child, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.die_with_parent = die_with_parent  # a watchdog stops it if this process dies
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self._stopped = False
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own group: a signal to us does not hit it twice
        )
        log.close()
        if self.die_with_parent:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, str(self.proc.pid), str(WATCHDOG_GRACE_S)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to us is not its business
            )
        atexit.register(self.stop)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}:\n{self.tail()}")
            if check():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not {what} after {timeout}s; see {self.log_path}")

    def signal(self, sig: signal.Signals, group: bool = True) -> None:
        """Send a signal to the child's whole process group (e.g. SIGSTOP to stall it), or
        to the child alone."""
        if self.alive():
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    @contextlib.contextmanager
    def running(self, check: Callable[[], bool], timeout: float, what: str = "ready") -> Iterator[Self]:
        """Started, and ``check`` true within ``timeout``, for the ``with`` block; stopped after."""
        self.start()
        try:
            self.wait_until(check, timeout, what)
            yield self
        finally:
            self.stop()

    def stop(self, grace: float = 10.0) -> None:
        """TERM to the child's process group, then KILL after ``grace``; returns once the
        whole group is gone (Triton's backend stub outlives the server by a moment). Only
        then is it stopped for good: a stop cut short (an interrupt, an error) is done again
        by a later call (atexit), instead of orphaning the group."""
        if self.proc is None:
            return
        self._end_watchdog()
        if self._stopped:
            return  # a later call (atexit) must not signal a process group id reused since
        proc = self.proc
        pgid = proc.pid
        if not self._group_is_ours(proc):
            self._stopped = True
            return
        try:
            os.killpg(pgid, signal.SIGCONT)  # a stalled child cannot act on TERM
            os.killpg(pgid, signal.SIGTERM)  # the whole group, even if its leader has exited
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                proc.wait(timeout=grace)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)  # raises once no process of the group is left
                time.sleep(0.05)
            os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:  # the group's last processes die now
                os.killpg(pgid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            self._stopped = True  # the whole group is gone: its id may be reused from now on

    def _end_watchdog(self) -> None:
        """Before a stop of our own: the watchdog must not signal the group's id once the
        group is gone (it could be another's by then)."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait(timeout=10)
            if self._watchdog.stdin is not None:
                self._watchdog.stdin.close()
            self._watchdog = None

    @staticmethod
    def _group_is_ours(proc: subprocess.Popen[bytes]) -> bool:
        """The group id (the leader's pid) still names this child's group: the leader is not
        reaped yet (its pid cannot be reused), or it is and no other process has taken its
        pid (the leader of a new group by that id would hold it)."""
        if proc.returncode is None:
            return True
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # another user's process has that pid now
        return False

    def kill(self) -> None:
        self._end_watchdog()
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
