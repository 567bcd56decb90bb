"""What every part of the benchmark shares: the models and variants compared, the ceiling's
shapes, the sampling period and the checkout it runs from."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `python scripts/bench`: how the bench runs its worker processes, as `pipeline bench` runs it
ENTRY = Path(__file__).resolve().parent
MODELS = ("recommender", "trivial")
# 2w: `pipeline run --workers 2`; state: with durable user state (state.dir: RocksDB stores and
# the changelog topic), against "pipeline", which keeps histories in memory
# strings: the same events and model in string ids (cust-…, SKU-…: the model's catalogue
# answers ITEM_KEYS), against "pipeline", in integer ids
VARIANTS = (
    "naive",
    "hand",
    "pipeline",
    "pipeline-strings",
    "pipeline-state",
    "pipeline-2w",
    "ceiling",
    "ceiling-shm",
)
# ceiling-shm (Triton alone with its tensors in system shared memory) is on request only: it
# measured no gain on this stack (docs/benchmarks.md), so the pipeline does not use it;
# pipeline-strings too (docs/benchmarks.md, string ids)
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in ("ceiling-shm", "pipeline-strings"))
CEILING_VARIANTS = ("ceiling", "ceiling-shm")
CEILING_SHAPES = ((1, 2), (2, 4), (2, 8), (4, 8))  # streams x requests in flight (in all)
CEILING_SECONDS = 2.0  # each shape sends for at least this long (the trivial model answers fast)
PARTITIONS = 4
SAMPLE_S = 0.05  # CPU sampling period of the consuming process, Triton and the broker
RUN_TIMEOUT_S = 900.0
WORKER_KINDS = ("ceiling", "hand", "naive")  # the loops run as `--_worker KIND` processes


def now_ms() -> int:
    return time.time_ns() // 1_000_000
