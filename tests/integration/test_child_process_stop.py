"""ChildProcess.stop is done for good only once the child's whole process group is gone: a
stop cut short (here a real interrupt while it waits for a child that ignores TERM) is done
again by the next call (the atexit one), instead of orphaning the group. Once the group is
gone, later calls signal nothing (its id may name another group by then)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from pipeline.devstack import process
from pipeline.devstack.process import ChildProcess

STUBBORN = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).write_text('up'); time.sleep(120)"
)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def child(tmp_path: Path) -> Iterator[ChildProcess]:
    ready = tmp_path / "ready"
    started = ChildProcess("stubborn", [sys.executable, "-c", STUBBORN, str(ready)], tmp_path / "log")
    started.start()
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield started
    finally:
        if started.proc is not None and started.proc.poll() is None:  # the test failed: no orphan
            os.killpg(started.pid, signal.SIGKILL)
            started.proc.wait(5)


def test_a_stop_cut_short_is_done_by_the_next_call(child: ChildProcess) -> None:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # while stop waits out the grace for TERM
    try:
        with pytest.raises(KeyboardInterrupt):
            child.stop(grace=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert group_alive(child.pid)  # TERM ignored, KILL not sent yet
    child.stop(grace=0.5)  # what atexit does
    assert not group_alive(child.pid)


def test_once_the_group_is_gone_later_stops_signal_nothing(
    child: ChildProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    child.stop(grace=0.5)
    assert not group_alive(child.pid)
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(process.os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    child.stop()  # atexit: the group id may have been reused since
    assert sent == []
