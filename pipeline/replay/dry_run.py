"""Dry run: every row through the pipeline's own parse rules, counted per dead-letter
reason, nothing produced. The rows are built exactly as a real replay sends them (same
headers, same run), so the counts are what the backfill topology will dead-letter. Rows the
replay would set aside in its reject file instead of sending (larger than the producer
accepts, a source record the client cannot decode) are counted apart, under ``rejected``.
The first rows of each reason are shown as examples (dry_run_report.py)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.errors import InvalidEvent
from pipeline.events import RawRecord
from pipeline.operators.parse import REPLAY_RUN_HEADER, ParseRules, ReplayClock, parse_record
from pipeline.replay.dry_run_report import ROW_NUMBERS, Examples
from pipeline.replay.files import Row
from pipeline.replay.progress import Counts, Progress
from pipeline.replay.rejects import MAX_REQUEST_BYTES, TOO_LARGE
from pipeline.replay.sender import record_headers


async def dry_run(
    rows: AsyncIterator[Row],
    rules: ParseRules,
    topic: str,
    run_id: str,
    progress: Progress,
    columns: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The counts, and the first rows of each reason; ``columns``: the file's column of each
    event field (a mapping's), named in the examples."""
    counts = Counts()
    examples, set_aside_examples = Examples(columns), Examples()
    reasons: Counter[str] = Counter()
    set_aside: Counter[str] = Counter()  # rows the replay would put in its reject file
    replays = ReplayClock() if rules.age_reference == "replay" else None
    run = run_id.encode()
    valid = 0
    async for row in rows:
        counts.read += 1
        if row.reject is not None:
            set_aside[row.reject[0]] += 1
            set_aside_examples.add(row.reject[0], row.number, None, row.reject[1])
            continue
        if row.value is None:
            if row.outside_time_range:
                counts.outside_time_range += 1
            else:
                counts.skipped += 1
            continue
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(row.key, row.value, record_headers(row, run))
        if size > MAX_REQUEST_BYTES:
            set_aside[TOO_LARGE] += 1
            set_aside_examples.add(
                TOO_LARGE, row.number, row.value, f"{size} bytes, more than {MAX_REQUEST_BYTES}"
            )
            continue
        now_ms = time.time_ns() // 1_000_000
        record = RawRecord(topic, 0, row.number, now_ms, row.key, row.value, ((REPLAY_RUN_HEADER, run),))
        try:
            parse_record(record, rules, now_ms, replays)
            valid += 1
        except InvalidEvent as rejected:
            reasons[rejected.reason] += 1
            examples.add(rejected.reason, row.number, row.value, rejected.detail)
        if counts.read % 4096 == 0:
            progress.update(counts, counts.read)
    progress.update(counts, counts.read)
    return {
        "dry_run": True,
        "rows": counts.read,
        "valid": valid,
        "skipped": counts.skipped,
        "outside_time_range": counts.outside_time_range,
        "dead_letters": dict(sorted(reasons.items())),
        "rejected": dict(sorted(set_aside.items())),
        "row_numbers": ROW_NUMBERS,  # how to read the examples' "row"
        "examples": dict(sorted(examples.by_reason.items())),
        "rejected_examples": dict(sorted(set_aside_examples.by_reason.items())),
    }
