"""The embedded broker under steady traffic with the dev stack's tuning: consumption keeps
up and the broker's CPU does not climb. Before the tuning (linger 5 ms) the broker's CPU
went from 14 % to 57 % of a core in 40 s at this rate and consumption stopped after ~140 s.
The same script runs for hours by hand (docs/embedded_broker.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_steady_traffic_is_consumed_and_the_broker_cost_stays_flat() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "scripts/broker_longrun.py",
            "--minutes",
            "0.75",
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
    assert summary["passed"] and summary["consumed"] == summary["produced"] >= 20_000
    # The script itself fails past 5 s of traffic behind; the suite shares the cores with
    # Triton and the session's broker, so the lag is not held tighter here.
    growth = summary["broker_cpu_pct_last"] - summary["broker_cpu_pct_min"]
    assert growth < 10, summary  # percentage points of a core in 45 s
