"""The metrics as scraped agree with docs/operations.md, and follow Prometheus naming."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from pipeline.metrics import Metrics, PartitionReading

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ARTICLE_NAMES = {"inference_duration_seconds", "request_queue_size"}


def scraped_families() -> dict[str, str]:
    metrics = Metrics()
    metrics.watch_partitions(lambda: [PartitionReading("t", 0, 5, 10, 1.5)])
    metrics.request_state_entered.watch("START", lambda: 1)
    text = generate_latest(metrics.registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def documented() -> set[str]:
    section = DOC.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def test_every_scraped_metric_is_documented_and_every_documented_one_exists() -> None:
    assert set(scraped_families()) == documented()


def test_names_follow_prometheus_conventions() -> None:
    for name, kind in scraped_families().items():
        assert name in ARTICLE_NAMES or name.startswith("pipeline_"), name
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
        assert not re.search(r"_(ms|millis|milliseconds)\b", name), name
