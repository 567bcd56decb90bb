"""BatchHistogram: a batch observed at once is exposed exactly as prometheus_client's own
histogram exposes the same values observed one by one (buckets, count, sum)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pipeline.metrics import LATENCY_BUCKETS, BatchHistogram


def exposition(observe: str, batches: list[list[float]]) -> list[str]:
    registry = CollectorRegistry()
    if observe == "one by one":
        reference = Histogram("h_seconds", "help", buckets=LATENCY_BUCKETS, registry=registry)
        for batch in batches:
            for value in batch:
                reference.observe(value)
    else:
        batched = BatchHistogram("h_seconds", "help", LATENCY_BUCKETS, registry)
        for batch in batches:
            batched.observe_many(np.asarray(batch, dtype=np.float64))
    lines = generate_latest(registry).decode().splitlines()
    # the sum in full precision differs in its last digits with the order of additions
    return [line if not line.startswith("h_seconds_sum") else line[:20] for line in lines]


def test_a_batch_reads_like_the_same_values_observed_one_by_one() -> None:
    rng = np.random.default_rng(3)
    batches = [
        list(rng.exponential(0.05, 128)),
        [0.001, 0.0025, 0.05, 30.0, 60.0],  # on the bounds: le is <=
        [61.0, 1e6, 0.0],  # above every bound (+Inf only), and zero
        [],
    ]
    assert exposition("batched", batches) == exposition("one by one", batches)


def test_count_and_plus_inf_agree() -> None:
    registry = CollectorRegistry()
    h = BatchHistogram("h_seconds", "help", LATENCY_BUCKETS, registry)
    h.observe_many(np.asarray([0.002, 100.0, 0.3]))
    assert registry.get_sample_value("h_seconds_count") == 3
    assert registry.get_sample_value("h_seconds_bucket", {"le": "+Inf"}) == 3
    assert registry.get_sample_value("h_seconds_bucket", {"le": "0.0025"}) == 1
    total = registry.get_sample_value("h_seconds_sum")
    assert total is not None and abs(total - 100.302) < 1e-9
