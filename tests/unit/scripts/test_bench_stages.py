"""scripts/bench_stages.py runs every stage it names on a small batch and writes its table
and plot (no timing assertions: speed claims live in the benchmark's output)."""

from __future__ import annotations

from pathlib import Path

from scripts import bench_stages


def test_the_stage_benchmark_times_every_stage_and_writes_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "stages"
    assert bench_stages.main(["--rows", "16", "--batches", "1", "--out", str(out)]) == 0
    table = Path(f"{out}.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        "source: client record → RawRecord",
        "parse and validate",
        "coalesce by user",
        "encode the request",
        "decode the answer",
        "enrich: output records",
        "sink: partition of each key",
        "sink: partition of each key",
        "finish: offsets",
        "finish: offsets",
        "(tracking, in both finish rows)",
    ]
    assert all(float(row.split(" | ")[2]) > 0 for row in rows)
    assert Path(f"{out}.png").stat().st_size > 10_000
