"""pipeline.procfs on this test's own process (on a child: tests/integration/test_procfs_children.py)."""

from __future__ import annotations

import mmap
import os
import time

from pipeline import procfs


def busy_until(cpu_s: float, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while procfs.cpu_seconds() < cpu_s and time.monotonic() < deadline:
        sum(i * i for i in range(100_000))


def test_cpu_seconds_grow_with_work_and_agree_for_self_and_pid() -> None:
    before = procfs.cpu_seconds(os.getpid())
    busy_until(before + 0.05)  # a few clock ticks, however loaded the shared cores are
    after = procfs.cpu_seconds("self")
    assert after >= before + 0.05
    own = procfs.stat()
    assert own.state == "R"  # reading its own stat, the process runs
    assert own.user_s > 0 and own.cpu_s == own.user_s + own.system_s


def test_minor_faults_count_touched_memory() -> None:
    before = procfs.cpu_and_faults([os.getpid()])[1]
    # a fresh anonymous mapping (malloc might hand back pages touched before): each page's
    # first touch is a minor fault
    with mmap.mmap(-1, 32 * 1024 * 1024) as block:
        for i in range(0, len(block), mmap.PAGESIZE):
            block[i] = 1
        assert procfs.cpu_and_faults([os.getpid()])[1] - before >= len(block) // mmap.PAGESIZE // 2


def test_resident_memory_and_its_peak() -> None:
    rss, peak = procfs.rss_mb(), procfs.peak_rss_mb(os.getpid())
    assert rss is not None and peak is not None
    assert 5 < rss <= peak < 100_000
    with mmap.mmap(-1, 64 * 1024 * 1024) as held:
        for i in range(0, len(held), mmap.PAGESIZE):
            held[i] = 1  # touched: resident
        now, grown = procfs.rss_mb(), procfs.peak_rss_mb()
        assert now is not None and grown is not None
        assert now >= rss + 50
        assert grown >= now


def test_threads_are_named_and_the_main_one_counts_this_work() -> None:
    threads = procfs.thread_cpu_seconds(os.getpid())
    assert threads["main"] > 0
    assert threads["main"] <= procfs.cpu_seconds() + 0.02  # the process's CPU holds its threads'
    assert all(name == "main" or "/" in name for name in threads)
