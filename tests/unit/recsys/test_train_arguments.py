"""`pipeline train` refuses numbers that make no sense with one line naming the option,
exit 2, before reading or writing anything: a negative history length was a numpy
traceback, --top-k 0 wrote a model that recommends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main

NONSENSE = [
    ("--history-length", "-3"),
    ("--history-length", "0"),
    ("--top-k", "0"),
    ("--top-k", "-1"),
    ("--synthetic", "0"),
    ("--synthetic", "-5"),
    ("--priority-levels", "-1"),
    ("--time-budget", "-1"),
    ("--time-budget", "nan"),
    ("--min-user-items", "0"),
    ("--top-k", "ten"),
]


@pytest.mark.parametrize(("option", "value"), NONSENSE)
def test_nonsense_numbers_are_refused_in_one_line(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    args = ["train", "--out", str(out), "--synthetic", "2000", "--time-budget", "1", option, value]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pipeline train: error: argument ") and option in last, last
    assert value in last, last
    assert not out.exists()  # nothing written
