"""The embedded broker under steady traffic with the dev stack's tuning: consumption keeps
up and the broker's CPU climbs slowly. Its memory engine lists every stored record batch on
each fetch, so the broker's CPU always grows with time; the dev stack's tuning (producers
lingering 100 ms: fewer, larger batches) keeps that growth slow enough for `pipeline dev` to
recycle its broker only every few minutes (it recycles at 15 points of growth). Before the
tuning (linger 5 ms) consumption stopped after ~140 s. The same script runs for hours by hand
(docs/embedded_broker.md).

The growth is the mean CPU share of the second half of the run less the first half's,
per minute, read from the broker's cumulative CPU seconds (scripts/broker_longrun.py): on 2
shared cores it measured 3.3 points a minute with the tuning and 77 with linger 5 ms. The
difference of two single 5 s readings, checked here before, flapped around its limit: the
lowest reading came before the consumer had joined, when the broker answered no fetch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# Points of a core per minute: 15 would have `pipeline dev` recycle its broker every minute.
MAX_GROWTH_PER_MIN = 15


def test_steady_traffic_is_consumed_and_the_broker_cost_grows_slowly() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "scripts/broker_longrun.py",
            "--minutes",
            "0.5",
            "--rate",
            "500",
            "--interval-s",
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (summary, done.stderr[-2000:])
    assert summary["passed"] and summary["consumed"] == summary["produced"] >= 12_000
    # The script itself fails past 5 s of traffic behind; the suite shares the cores with
    # Triton and the session's broker, so the lag is not held tighter here.
    assert summary["broker_cpu_growth_per_min"] < MAX_GROWTH_PER_MIN, summary
