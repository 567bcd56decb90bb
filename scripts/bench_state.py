"""The per-partition history store (pipeline/state/histories.py) at scale, in one process:
USERS users x 16 items loaded as a restore applies them (packed histories, flushed every
10,000 users), then updates of random users (mostly read back from disk), then a reopen and
random reads. Reports time, disk per user and resident memory against the cache's bound.

    python scripts/bench_state.py [--users 10000000] [--cache-mb 64] [--out docs/bench_state]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline import procfs
from pipeline.operators.coalesce import pack_pairs
from pipeline.state.histories import HistoryStore

ROOT = Path(__file__).resolve().parents[1]
HISTORY = 16
FLUSH_EVERY = 10_000


def load(store: HistoryStore, users: int, samples: list[tuple[float, float]], started: float) -> float:
    begin = time.perf_counter()
    for user in range(users):
        pairs = [(user * 7 + i, (user * 31 + i * 977) % 1_000_000) for i in range(HISTORY)]
        store.put_packed(user, pack_pairs(pairs))
        if user % FLUSH_EVERY == FLUSH_EVERY - 1:
            store.flush(changelog_offset=user)
            if user % (FLUSH_EVERY * 20) == FLUSH_EVERY * 20 - 1:
                samples.append((time.perf_counter() - started, procfs.rss_mb() or 0.0))
    store.flush(changelog_offset=users)
    return time.perf_counter() - begin


def timed_updates(store: HistoryStore, users: int, count: int, rng: random.Random) -> float:
    begin = time.perf_counter()
    for n in range(count):
        store.extend(rng.randrange(users), [(10**9 + n, rng.randrange(1_000_000))])
        if n % 1_000 == 999:
            store.flush()
    store.flush()
    return (time.perf_counter() - begin) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--cache-mb", type=float, default=64.0)
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_state")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-state-"))
    rng = random.Random(3)
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()
    try:
        store = HistoryStore(workdir / "p0", HISTORY, True, int(args.cache_mb * (1 << 20)))
        load_s = load(store, args.users, samples, started)
        update_us = timed_updates(store, args.users, args.updates, rng)
        hit_rate = store.hits / max(1, store.hits + store.misses)
        store.close()
        disk = store.disk_bytes()  # its files, once closed and flushed
        reopened = HistoryStore(workdir / "p0", HISTORY, True, int(args.cache_mb * (1 << 20)))
        begin = time.perf_counter()
        reads = 100_000
        for _ in range(reads):
            assert len(reopened.history(rng.randrange(args.users))) == HISTORY
        read_us = (time.perf_counter() - begin) / reads * 1e6
        reopened.close()
        peak = procfs.peak_rss_mb() or 0.0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        ("users x items", f"{args.users:,} x {HISTORY}"),
        ("cache bound", f"{args.cache_mb:.0f} MB"),
        ("load (as a restore applies), users/s", f"{args.users / load_s:,.0f} ({load_s:.1f} s)"),
        ("update of a random user, µs (cache hit rate)", f"{update_us:.1f} ({hit_rate:.1%})"),
        ("read of a random user after reopening, µs", f"{read_us:.1f}"),
        ("disk per user, bytes (raw pairs: 256)", f"{disk / args.users:.0f}"),
        ("peak RSS of the process, MB", f"{peak:.0f}"),
    ]
    lines = ["# The history store at scale", "", "`python scripts/bench_state.py`", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", f"![RSS while loading]({args.out.name}.png)", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text("\n".join(lines))
    plot(samples, args.users, Path(f"{args.out}.png"))
    print("\n".join(lines))
    return 0


def plot(samples: list[tuple[float, float]], users: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([s for s, _ in samples], [mb for _, mb in samples])
    ax.set_xlabel("seconds loading")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"History store: RSS while {users:,} users are loaded")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
