"""pipeline.procfs on a child process this test starts, and once it is gone."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline import procfs


def test_children_and_a_process_that_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in procfs.children(os.getpid())
        assert procfs.rss_mb(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    assert child.pid not in procfs.children(os.getpid())
    assert procfs.rss_mb(child.pid) is None and procfs.peak_rss_mb(child.pid) is None
    assert procfs.cpu_and_faults([child.pid]) == (0.0, 0)
