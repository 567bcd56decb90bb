"""A child started with ``die_with_parent`` is stopped, its whole process group with it,
when its owner dies however it dies (SIGKILL runs no atexit), and not by the watchdog once
the owner stopped it itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

OWNER = """
import sys, time
from pathlib import Path
from pipeline.devstack.process import ChildProcess
child = ChildProcess("sleeper", ["sh", "-c", "sleep 300 & sleep 300"], Path(sys.argv[1]) / "log",
                     die_with_parent=True)
child.start()
print(child.pid, flush=True)
time.sleep(300)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_owners_child_and_grandchildren_stop(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pgid = int(owner.stdout.readline())
        assert _group_alive(pgid)
        owner.kill()  # SIGKILL: no handler, no atexit
        owner.wait()
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = _group_alive(pgid)
        if alive:  # the test's own orphans: not left behind
            os.killpg(pgid, signal.SIGKILL)
        assert not alive
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_a_stop_of_its_own_ends_the_watchdog_first(tmp_path: Path) -> None:
    from pipeline.devstack.process import ChildProcess

    child = ChildProcess("sleeper", ["sleep", "300"], tmp_path / "log", die_with_parent=True)
    child.start()
    watchdog = child._watchdog
    assert watchdog is not None and watchdog.poll() is None
    child.stop(grace=5)
    assert watchdog.poll() is not None and not child.alive()
