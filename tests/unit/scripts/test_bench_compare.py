"""scripts/bench_compare.py: pipeline / hand per run and rep from bench tables, medians per
side, a PNG; a table without those rows, or an argument without its side, is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import bench_compare

ROWS = """
| rep | model | variant | ev/s | drain ev/s | CPU s/1k | RSS MB | e2e p99 ms | Triton | shapes |
|---|---|---|---|---|---|---|---|---|---|
| 1 | recommender | hand | 10,000 | 9,900 | 0.050 | 100 | 15,000 | x |  |
| 1 | recommender | pipeline | {p1} | 9,900 | 0.040 | 140 | 14,000 | x |  |
| 2 | recommender | hand | 8,000 | 7,900 | 0.050 | 100 | 15,000 | x |  |
| 2 | recommender | pipeline | {p2} | 7,900 | 0.060 | 141 | 14,000 | x |  |
"""


def test_ratios_are_taken_within_each_run_and_summed_up_per_side(tmp_path: Path) -> None:
    before = tmp_path / "before.md"
    after = tmp_path / "after.md"
    before.write_text(ROWS.format(p1="12,000", p2="8,000"))
    after.write_text(ROWS.format(p1="9,000", p2="6,000"))
    out = tmp_path / "cmp"
    assert bench_compare.main(["--out", str(out), f"before={before}", f"after={after}"]) == 0
    table = out.with_suffix(".md").read_text()
    assert "| before1 | recommender | 1 | 10,000 | 12,000 | 1.20 | 0.80 | 140 |" in table
    assert "| after1 | recommender | 2 | 8,000 | 6,000 | 0.75 | 1.20 | 141 |" in table
    assert "| recommender | 1.10 (1.20, 1.00) | 0.82 (0.90, 0.75) | 1.00 | 1.00 |" in table
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("spec", ["no-side", "before=/nonexistent.md"])
def test_a_bad_argument_is_one_line(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_compare.main(["--out", str(tmp_path / "x"), spec]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_table_without_the_runs_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("# nothing here\n")
    assert bench_compare.main(["--out", str(tmp_path / "x"), f"before={empty}"]) == 2
    assert str(empty) in capsys.readouterr().err
