"""LaneGuard: rations for the lanes below a protected lane, from each interval's p99."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.control.lane_guard import CUT, GROW_BELOW, LaneGuard
from pipeline.testing.builders import guarded_lane

LIVE = guarded_lane("live", p99_bound_ms=100.0)
BACKFILL = guarded_lane("backfill", min_rate=50.0, rate_step=100.0)


def guard() -> LaneGuard:
    return LaneGuard([LIVE, BACKFILL])


def feed(g: LaneGuard, lane: str, latency_ms: float, rows: int, batches: int = 20) -> None:
    for _ in range(batches):
        g.observe(lane, latency_ms, rows // batches)


def test_lanes_below_a_protected_lane_start_rationed_at_their_floor():
    g = LaneGuard([guarded_lane("top"), LIVE, BACKFILL, guarded_lane("bulk", min_rate=10.0)])
    assert g.active
    assert g.rates == {"top": None, "live": None, "backfill": 50.0, "bulk": 10.0}


def test_a_protected_lane_below_another_starts_free_and_is_cut_only_by_the_one_above():
    g = LaneGuard([guarded_lane("purchases", p99_bound_ms=50.0), LIVE, BACKFILL])
    assert g.rates == {"purchases": None, "live": None, "backfill": 50.0}
    feed(g, "purchases", 30.0, rows=10)
    feed(g, "live", 300.0, rows=1000)  # live over its bound: only the lanes below it pay
    feed(g, "backfill", 5.0, rows=25)
    assert g.tick(0.5) == {"purchases": None, "live": None, "backfill": 50.0}
    feed(g, "purchases", 100.0, rows=10)  # purchases over: live is cut too
    feed(g, "live", 30.0, rows=1000)
    assert g.tick(0.5)["live"] == pytest.approx(2000.0 * CUT)


def test_inactive_without_a_protected_lane_or_with_nothing_below_it():
    assert not LaneGuard([guarded_lane("a"), guarded_lane("b")]).active
    assert not LaneGuard([guarded_lane("a"), guarded_lane("b", p99_bound_ms=50.0)]).active
    assert LaneGuard([guarded_lane("a", p99_bound_ms=50.0), guarded_lane("b")]).active


def test_grows_by_its_step_while_the_protected_lane_is_well_within_its_bound():
    g = guard()
    feed(g, "live", 100.0 * GROW_BELOW - 10, rows=100)
    feed(g, "backfill", 5.0, rows=25)  # delivered 50 rows/s over 0.5 s: the ration binds
    assert g.tick(0.5)["backfill"] == 150.0
    assert g.last_reason == "within bounds"


def test_holds_inside_the_band_between_grow_below_and_the_bound():
    g = guard()
    feed(g, "live", 100.0 * GROW_BELOW + 10, rows=100)
    feed(g, "backfill", 5.0, rows=25)
    assert g.tick(0.5)["backfill"] == 50.0
    assert g.last_reason == "near a bound"


def test_a_violation_cuts_to_what_was_delivered_scaled_by_how_far_over():
    g = guard()
    g.rates["backfill"] = 4000.0
    feed(g, "live", 400.0, rows=100)  # 4x over: cut to a quarter, not just CUT
    feed(g, "backfill", 5.0, rows=1000)  # delivered 2000 rows/s over 0.5 s
    assert g.tick(0.5)["backfill"] == pytest.approx(2000.0 / 4)
    g.rates["backfill"] = 4000.0
    feed(g, "live", 120.0, rows=100)  # a little over: the cut is still at least CUT
    feed(g, "backfill", 5.0, rows=1000)
    assert g.tick(0.5)["backfill"] == pytest.approx(2000.0 * CUT)


def test_a_cut_never_goes_under_the_floor():
    g = guard()
    feed(g, "live", 10_000.0, rows=100)
    assert g.tick(0.5)["backfill"] == BACKFILL.min_rate


def test_a_ration_the_lane_no_longer_reaches_is_lifted():
    g = guard()
    g.rates["backfill"] = 1000.0
    feed(g, "live", 10.0, rows=100)
    feed(g, "backfill", 5.0, rows=100)  # 200 rows/s against a ration of 1000
    assert g.tick(0.5)["backfill"] is None


def test_no_answers_from_a_protected_lane_with_work_moves_nothing():
    g = guard()
    feed(g, "backfill", 5.0, rows=1000)
    assert g.tick(0.5)["backfill"] == 50.0
    assert g.last_reason == "no evidence"


def test_an_idle_protected_lane_lets_the_rations_grow():
    g = guard()
    feed(g, "backfill", 5.0, rows=25)  # 50 rows/s: it uses its ration
    assert g.tick(0.5, idle={"live"})["backfill"] == 150.0
    assert g.last_reason == "within bounds"


def test_closed_loop_settles_under_the_bound_and_stays_there():
    """A machine where the live p99 grows with the backfill's rate (shared CPU): 20 ms plus
    40 ms per 1000 backfill rows/s, so the bound of 100 ms holds up to 2000 rows/s. The
    backfill wants 6000 rows/s. Once settled the live lane keeps its bound in (almost)
    every interval and the backfill still gets a good part of what the machine allows."""
    rng = np.random.default_rng(0)
    g = LaneGuard([LIVE, guarded_lane("backfill", min_rate=50.0, rate_step=100.0)])
    p99s, rates = [], []
    for _ in range(400):
        rate = g.rates["backfill"]
        delivered = min(6000.0, rate if rate is not None else 6000.0)
        live_p99 = 20.0 + 0.04 * delivered + rng.normal(0, 3)
        feed(g, "live", live_p99, rows=150)
        feed(g, "backfill", 5.0, rows=int(delivered * 0.5))
        g.tick(0.5)
        p99s.append(live_p99)
        rates.append(delivered)
    settled = np.asarray(p99s[100:])
    assert (settled > 100.0).mean() < 0.05
    assert 1000.0 < np.mean(rates[100:]) <= 2000.0
