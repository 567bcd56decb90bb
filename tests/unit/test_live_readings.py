"""The live page's data: readings of the registry, histogram quantiles, the sampler's points
(rates and quantiles between readings), its bounds in count and bytes, the state it lists,
and the page and its JSON as the operations endpoint serves them on a running pipeline."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.control.breaker import CircuitBreaker
from pipeline.devstack.process import free_port
from pipeline.health import OpsServer
from pipeline.live import LiveSampler, RuntimeParts, parts_of, render
from pipeline.live.readings import Reading, increase, quantile
from pipeline.live.sampler import KEEP_POINTS, MAX_ROWS, RATE_WINDOW
from pipeline.metrics import Metrics, PartitionReading
from pipeline.testing import running, topology
from pipeline.testing.builders import input_record

INF = math.inf


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def sampler(
    metrics: Metrics, parts: RuntimeParts | None = None, keep: int = KEEP_POINTS
) -> tuple[LiveSampler, Clock]:
    clock = Clock()
    return LiveSampler(metrics, parts, keep=keep, clock=clock), clock


# ── readings and quantiles ───────────────────────────────────────────────────────────────
def test_quantiles_interpolate_inside_the_bucket_as_prometheus_does() -> None:
    buckets = ((0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (INF, 100.0))
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 49 / 50)
    assert quantile(0.25, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.99, ((0.01, 0.0), (INF, 0.0))) is None  # nothing counted
    assert quantile(0.99, ()) is None
    assert quantile(0.99, ((0.01, 1.0), (1.0, 1.0), (INF, 10.0))) == 1.0  # above every bound


def test_increase_is_what_buckets_gained_or_all_of_them_without_an_earlier_reading() -> None:
    older = ((0.1, 2.0), (INF, 5.0))
    newer = ((0.1, 7.0), (INF, 11.0))
    assert increase(newer, older) == ((0.1, 5.0), (INF, 6.0))
    assert increase(newer, None) == newer
    assert increase(newer, ((0.5, 1.0), (INF, 1.0))) == newer  # other bounds: not comparable


def test_a_reading_sums_series_by_label_and_leaves_unknown_values_out() -> None:
    m = Metrics()
    m.events_consumed.labels("a").inc(3)
    m.events_consumed.labels("b").inc(4)
    m.batch_latency.labels("live").observe(0.02)
    m.batch_latency.labels("bulk").observe(2.0)
    m.watch_partitions(lambda: [PartitionReading("a", 0, None, None, float("nan"))])
    reading = Reading.of(m.registry)
    assert reading.total("pipeline_events_consumed_total") == 7
    assert reading.by("pipeline_events_consumed_total", "topic") == {"a": 3, "b": 4}
    assert reading.total("pipeline_oldest_unfinished_age_seconds") == 0  # NaN: not known yet
    lanes = reading.buckets_by("pipeline_batch_latency_seconds", "lane")
    assert set(lanes) == {"live", "bulk"}
    assert quantile(0.5, lanes["live"]) == pytest.approx(0.01 + 0.015 * 0.5)


# ── the sampler ──────────────────────────────────────────────────────────────────────────
def test_points_are_rates_and_quantiles_over_the_readings_before_them() -> None:
    m = Metrics()
    live, clock = sampler(m)
    live.sample()
    assert not live.points  # one reading: nothing to take a rate over
    m.events_consumed.labels("in").inc(100)
    m.recommendations.inc(80)
    m.dead_letters.labels("malformed").inc(2)
    m.end_to_end.observe_many(np.array([0.02] * 50 + [0.2] * 50))
    m.inference_duration.labels("rec", "ok").observe(0.004)
    m.in_flight_events.set(17)
    clock.t += 2.0
    live.sample()
    point = live.points[-1]
    assert (point.consumed, point.recommended, point.dead_lettered) == (50.0, 40.0, 1.0)
    assert point.e2e_p50_ms == pytest.approx(25.0)  # the 50th of 100: the top of 10-25 ms
    assert point.e2e_p99_ms == pytest.approx(100 + 150 * 49 / 50, abs=0.01)
    assert point.inference_p99_ms == pytest.approx(2.5 + 2.5 * 0.99, abs=0.01)
    assert point.in_flight == 17
    assert point.lag is None  # no partition readings yet: not known, rather than 0


def test_rates_and_quantiles_cover_the_last_few_readings_only() -> None:
    m = Metrics()
    live, clock = sampler(m)
    live.sample()
    m.recommendations.inc(1_000)
    m.end_to_end.observe_many(np.array([5.0] * 10))  # a slow burst, long ago
    for _ in range(RATE_WINDOW + 1):
        clock.t += 1.0
        live.sample()
    m.recommendations.inc(10)
    m.end_to_end.observe_many(np.array([0.002] * 10))
    clock.t += 1.0
    live.sample()
    point = live.points[-1]
    assert point.recommended == pytest.approx(10 / RATE_WINDOW)
    assert point.e2e_p99_ms is not None and point.e2e_p99_ms < 2.5  # the burst is out of the window
    clock.t += 1.0
    for _ in range(RATE_WINDOW):
        clock.t += 1.0
        live.sample()
    assert live.points[-1].e2e_p99_ms is None  # nothing answered lately: a gap, not a zero
    assert live.points[-1].recommended == 0.0


def test_the_ring_is_bounded_and_its_json_small() -> None:
    m = Metrics()
    m.watch_partitions(
        lambda: [PartitionReading("in", p, 1_000 + p, 10_000, 0.5) for p in range(MAX_ROWS + 20)]
    )
    for lane in ("purchases", "browsing", "backfill"):
        m.batch_latency.labels(lane).observe(0.05)
    live, clock = sampler(m, keep=KEEP_POINTS)
    for i in range(KEEP_POINTS + 50):
        m.events_consumed.labels("in").inc(1234.5678)
        m.recommendations.inc(999)
        m.end_to_end.observe_many(np.array([0.01 * (1 + i % 7)] * 20))
        clock.t += 1.0
        live.sample()
    document = live.json()
    assert len(live.points) == KEEP_POINTS
    assert live.points[0].t == pytest.approx(1_000.0 + 51)  # the oldest forgotten
    assert len(live.marks) == RATE_WINDOW + 1
    print(f"\nLIVE JSON: {len(document)} bytes")
    assert len(document) < 50_000, len(document)  # ten minutes of points, 40 partitions listed
    data = orjson.loads(document)
    assert all(len(column) == KEEP_POINTS for column in data["series"].values())
    assert data["window_s"] == KEEP_POINTS


def test_partitions_are_listed_worst_first_up_to_a_bound() -> None:
    m = Metrics()
    readings = [PartitionReading("in", p, p % 7, 100 * p, 0.1 * p) for p in range(MAX_ROWS + 10)]
    m.watch_partitions(lambda: readings)
    live, _ = sampler(m)
    live.sample()
    partitions = live.now["partitions"]
    assert partitions["count"] == MAX_ROWS + 10
    rows = partitions["rows"]
    assert len(rows) == MAX_ROWS
    assert [r["lag"] for r in rows[:3]] == [6, 6, 6]
    assert rows[0]["oldest_unfinished_s"] >= rows[1]["oldest_unfinished_s"]  # ties: the oldest first
    assert set(rows[0]) == {"topic", "partition", "lag", "committed", "oldest_unfinished_s"}


def test_restores_and_arms_are_listed_only_when_the_pipeline_has_them() -> None:
    m = Metrics()
    live, _ = sampler(m)
    live.sample()
    assert live.now["restores"] is None and live.now["arms"] is None
    m.state_restore_lag.labels("0").set(0)
    m.state_restore_lag.labels("1").set(300)
    m.state_restored_records.labels("1").inc(700)
    m.state_restoring.set(1)
    m.arm_serving.labels("control", "1").set(1)
    m.arm_serving.labels("treatment", "2").set(0)
    m.arm_recommendations.labels("control", "1").inc(50)
    for outcome, n in (("hit", 3), ("miss", 9), ("no_return", 4)):
        m.outcomes.labels("control", "1", outcome).inc(n)
    live.sample()
    restores = live.now["restores"]
    assert restores["restoring"] == 1
    assert restores["partitions"] == [
        {"partition": 1, "lag": 300, "restored": 700},
        {"partition": 0, "lag": 0, "restored": 0},
    ]
    control, treatment = live.now["arms"]
    assert control == {
        "arm": "control",
        "version": "1",
        "serving": True,
        "recommendations": 50,
        "hits": 3,
        "misses": 9,
        "no_return": 4,
        "hit_rate": 0.25,  # hit / (hit + miss), as hit@K in docs/operations.md
    }
    assert treatment["serving"] is False and treatment["hit_rate"] is None


def test_the_breaker_and_lanes_are_read_from_their_owners() -> None:
    m = Metrics()
    breaker = CircuitBreaker(failure_threshold=2, open_ms=1_000, max_open_ms=5_000)
    breaker.record_failure(probe=False, server_down=True)
    m.lane_rate.labels("bulk").set(120)
    m.batch_latency.labels("bulk").observe(0.3)
    live, _ = sampler(m, RuntimeParts("demo", breaker, None))
    live.sample()
    assert live.now["breaker"] == {"state": "open", "trips": 1, "consecutive_failures": 1}
    (bulk,) = live.now["lanes"]  # without the scheduler: the lanes the metrics name
    assert bulk["id"] == "bulk" and bulk["ration_rows_s"] == 120
    assert parts_of(object()) == RuntimeParts()  # a stand-in without a runtime's parts


def test_the_page_inlines_its_data_without_letting_a_label_end_the_script() -> None:
    page = render(orjson.dumps({"name": "</script><script>alert(1)</script>"}))
    assert page.count(b"</script>") == 2  # the page's own two script elements
    assert b"\\u003c/script>\\u003cscript>" in page


# ── served by the endpoint of a running pipeline ──────────────────────────────────────────
async def _get(port: int, path: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_the_endpoint_serves_the_page_and_its_json_from_a_running_pipeline() -> None:
    records = [
        input_record(user_id=u % 40, item_id=u % 90, type="purchase" if u % 5 else "view") for u in range(400)
    ]
    async with running(topology(window={"max_ms": 20}), records) as run:
        server = OpsServer(run.runtime.metrics, run.runtime, free_port())
        server.live.interval_s = 0.05
        await server.start()
        try:
            await run.settled()
            await asyncio.sleep(0.3)  # a few rounds of the sampler after the work
            page_head, page = await _get(server.port, "/")
            json_head, body = await _get(server.port, "/live.json?since=0")
        finally:
            await server.stop()
        stopped_sampling = server._sampling is not None and server._sampling.done()
    assert page_head.startswith(b"HTTP/1.1 200") and b"text/html" in page_head
    assert b'id="chart-throughput"' in page and b"/*LIVE_DATA*/" not in page
    assert json_head.startswith(b"HTTP/1.1 200") and b"application/json" in json_head
    data: dict[str, Any] = orjson.loads(body)
    assert data["name"] == "recommendations" and data["sampler"] == "running"
    assert data["health"] == {"started": True, "ready": True, "problems": []}
    assert max(v for v in data["series"]["recommended"] if v is not None) > 0
    assert any(v is not None for v in data["series"]["e2e_p99_ms"])
    now = data["now"]
    assert now["breaker"]["state"] == "closed"
    assert {lane["id"]: lane["max_in_flight"] for lane in now["lanes"]} == {"purchases": 4, "browsing": 8}
    assert all(lane["in_flight"] == 0 for lane in now["lanes"])  # all answered
    assert stopped_sampling  # the endpoint's stop ends its sampler


async def test_a_sampler_that_gave_up_leaves_the_page_saying_so() -> None:
    server = OpsServer(Metrics(), _Stand(), free_port())
    server._on_sampler_given_up(RuntimeError("registry broke"))
    data = orjson.loads(server.live_json())
    assert data["sampler"] == "stopped: RuntimeError('registry broke')"


class _Stand:
    def is_ready(self) -> bool:
        return False

    def is_started(self) -> bool:
        return True

    def liveness_problems(self) -> list[str]:
        return []
