"""scripts/bench --set: topology overrides are checked before any stack starts,
and the hand loop and the ceiling follow the pipeline's batch size."""

from __future__ import annotations

import pytest

from scripts.bench.cli import parse_args, set_key
from scripts.bench.config import DEFAULT_VARIANTS
from scripts.bench.report import half_rate_table, report
from scripts.bench.stats import stages


def test_set_parses_yaml_values_and_nested_paths() -> None:
    args = parse_args(["--set", "batch.max_size=256", "--set", "window.max_ms=5"])
    assert args.set == [("batch.max_size", 256), ("window.max_ms", 5)]
    data: dict[str, object] = {"batch": {"max_size": 128}}
    set_key(data, "batch.max_size", 256)
    assert data == {"batch": {"max_size": 256}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nosuch.key=1", "no section 'nosuch'"),
        ("batch.max_size=0", "greater than 0"),
        ("batch=1", "no longer valid"),
        ("batch.max_size", "expected KEY.PATH=VALUE"),
        ("source.topics=[x]", "set by the benchmark"),
        ("model.name=other", "set by the benchmark"),
        ("broker.bootstrap_servers=h:1", "set by the benchmark"),
    ],
)
def test_a_wrong_override_fails_before_anything_starts(
    override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--set", override])
    assert message in str(exited.value) + capsys.readouterr().err


def test_a_wrong_latency_setting_fails_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--half-rate-set", "window.max_ms=0"])
    assert "--half-rate-set window.max_ms" in str(exited.value) + capsys.readouterr().err
    assert parse_args(["--half-rate-set", "window.max_ms=5"]).half_rate_set == [("window.max_ms", 5)]


def test_shared_memory_ceiling_runs_only_on_request() -> None:
    assert "ceiling-shm" not in DEFAULT_VARIANTS
    assert parse_args([]).variants == list(DEFAULT_VARIANTS)
    assert "ceiling-shm" in parse_args(["--variants", "ceiling,ceiling-shm"]).variants


def half(setting: str, p99: float) -> dict[str, object]:
    return {
        "setting": setting,
        "seconds": 15.0,
        "offered": 10_000.0,
        "rate": 9_990.0,
        "e2e_p50": 40.0,
        "e2e_p99": p99,
        "proc_p50": 30.0,
        "proc_p99": p99 - 5,
        "cpu_consumer": 0.03,
        "cpu_triton": 0.05,
        "cpu_broker": 0.04,
    }


def test_latency_table_has_a_row_per_setting_with_the_median_and_each_runs_p99() -> None:
    rows = [
        half("shipped", 120.0),
        half("window.max_ms=5", 60.0),
        half("shipped", 100.0),
        half("shipped", 90.0),
    ]
    lines = half_rate_table(rows)
    shipped = next(line for line in lines if line.startswith("| shipped |"))
    assert "| 3 |" in shipped and "40.0 / 100.0" in shipped and "120, 100, 90" in shipped
    assert any(line.startswith("| window.max_ms=5 | 1 |") for line in lines)
    # a results file written before settings existed holds one row without a setting
    old = half("shipped", 80.0)
    del old["setting"]
    assert any(line.startswith("| shipped | 1 |") for line in half_rate_table([old]))


def test_only_the_latency_step_needs_its_rate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--reps", "0"])
    assert "--half-rate EV_S" in capsys.readouterr().err
    assert parse_args(["--reps", "0", "--half-rate", "10000"]).half_rate == 10_000


def test_stages_split_a_recommendations_time_by_its_own_timings() -> None:
    inputs = {("in", 0, 7): 1_000}
    doc = {
        "sources": [{"topic": "in", "partition": 0, "offset": 7}],
        "window": {"start_ms": 1_012, "end_ms": 1_032},
        "timings": {"queued_ms": 3.0, "inference_ms": 15.0},
    }
    split = stages([(1_056, doc)], inputs)
    assert split == {
        "to window close": [32.0, 32.0],
        "queued": [3.0, 3.0],
        "inference": [15.0, 15.0],
        "to output": [6.0, 6.0],
    }
    lines = half_rate_table([{**half("shipped", 90.0), "stages": split}])
    assert any(
        line.startswith("| shipped | 32.0 / 32.0 | 3.0 / 3.0 | 15.0 / 15.0 | 6.0 / 6.0 |") for line in lines
    )


def test_a_latency_only_page_has_no_empty_run_tables() -> None:
    meta = {
        "command": "python scripts/bench --reps 0 --half-rate 10000",
        "batch": 128,
        "events": 100_000,
        "naive_events": 2_000,
        "reps": 0,
        "hand_produce": "send",
        "hand_batch_bytes": 1_048_576,
    }
    facts = {"date": "today", "nproc": "2", "cpu": "cpu", "python": "3.11", "commit": "abc"}
    page = report(meta, [], [half("shipped", 90.0)], facts)
    assert "| shipped | 1 |" in page
    assert "| model | variant |" not in page and "![throughput]" not in page
