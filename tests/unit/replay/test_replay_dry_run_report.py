"""A dry run gave counts only, and exit 0 when every row would be dead-lettered (issue 27,
item 4): it now shows, per reason, the first rows (numbers, the field at fault, the file's
column and value) and exits 1 past --max-reject-share of the rows to send failing. File
only: no broker is reached."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.cli import main
from pipeline.replay.dry_run_report import (
    EXAMPLES_PER_REASON,
    ROW_NUMBERS,
    describe,
    example,
    failing_share,
    verdict,
)
from tests.unit.refused_arguments import assert_refused_by_the_parser

TOPOLOGY = Path(__file__).resolve().parents[3] / "topologies" / "backfill.yaml"
MAPPING = (
    "user: customer\nitem: sku\ntimestamp: {column: ts, unit: s}\ntype: {column: kind}\nevent_id: null\n"
)
TS = 1_700_000_000


def dry_run(*args: str | Path) -> list[str]:
    return ["replay", "--topology", str(TOPOLOGY), "--progress", "log", "--dry-run", *map(str, args)]


@pytest.fixture
def mapping(tmp_path: Path) -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(MAPPING)
    return path


def export(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text("customer,sku,ts,kind\n" + "".join(f"{row}\n" for row in rows))
    return path


def test_the_first_rows_of_each_reason_with_their_values(
    tmp_path: Path, mapping: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"{n},{n},{TS},view" for n in range(6)]
    rows[1] = "1,1,yesterday,view"  # wrong_type: ts
    rows[3] = f"3,3,{TS},buy"  # unknown_type
    rows[4] = "4,4,today,view"
    path = export(tmp_path, rows + [f"{n},{n},soon,view" for n in range(6, 9)])
    assert main(dry_run("--file", path, "--mapping", mapping, "--max-reject-share", "0.7")) == 0  # 6 of 9
    out, err = capsys.readouterr()
    report = orjson.loads(out.strip().splitlines()[-1])
    assert report["dead_letters"] == {"unknown_type": 1, "wrong_type": 5}
    assert report["examples"]["unknown_type"] == [
        {"row": 3, "field": "type", "column": "kind", "value": "buy", "detail": "unknown event type 'buy'"}
    ]
    wrong = report["examples"]["wrong_type"]
    assert [e["row"] for e in wrong] == [1, 4, 6]  # the first three, in file order
    assert wrong[0] == {
        "row": 1,
        "field": "ts",
        "column": "ts",
        "value": "yesterday",
        "detail": "field 'ts' must be an integer, got str",
    }
    lines = err.strip().splitlines()
    assert lines[0].startswith("dry run: 9 rows: 3 valid, 6 to dead-letter")
    assert lines[1] == (
        "  dead letter unknown_type: 1 row (unknown event type 'buy'); "
        "first: row 3: type (column kind) = 'buy'"
    )
    assert lines[2].startswith(
        "  dead letter wrong_type: 5 rows (field 'ts' must be an integer, got str); first: "
        "row 1: ts = 'yesterday'; row 4: ts = 'today'; row 6: ts = 'soon'"
    ), lines
    # which row is "row 1": said in the output, not only in docs/replay.md
    assert lines[-1] == f"  ({ROW_NUMBERS})" and "the first data row" in lines[-1]
    assert report["row_numbers"] == ROW_NUMBERS
    assert "1,1,yesterday,view" in path.read_text().splitlines()[2]  # row 1: the file's third line


def test_more_than_the_share_failing_is_exit_1_with_one_line_saying_so(
    tmp_path: Path, mapping: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: every row would be dead-lettered, and the dry run said exit 0."""
    path = export(tmp_path, [f"{n},{n},{TS},buy" for n in range(10)])
    assert main(dry_run("--file", path, "--mapping", mapping)) == 1
    out, err = capsys.readouterr()
    report = orjson.loads(out.strip().splitlines()[-1])
    assert report["valid"] == 0 and report["dead_letters"] == {"unknown_type": 10}
    assert [e["row"] for e in report["examples"]["unknown_type"]] == list(range(EXAMPLES_PER_REASON))
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "dry run: 100.0% of the rows to send would be dead-lettered or set aside, more than "
            "--max-reject-share 0.5"
        )
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(("share", "code"), [("0.3", 1), ("0.4", 0), ("1", 0), ("0", 1)])
def test_the_share_is_the_callers(
    tmp_path: Path, mapping: Path, capsys: pytest.CaptureFixture[str], share: str, code: int
) -> None:
    """4 of 10 rows fail: 0.4 is not more than 0.4."""
    rows = [f"{n},{n},{TS},{'buy' if n < 4 else 'view'}" for n in range(10)]
    assert (
        main(dry_run("--file", export(tmp_path, rows), "--mapping", mapping, "--max-reject-share", share))
        == code
    )


def test_a_clean_file_is_exit_0_even_with_a_share_of_0(
    tmp_path: Path, mapping: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export(tmp_path, [f"{n},{n},{TS},view" for n in range(3)])
    assert main(dry_run("--file", path, "--mapping", mapping, "--max-reject-share", "0")) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "dry run: 3 rows: 3 valid, 0 to dead-letter, 0 to set aside, 0 skipped by the mapping"
    ]


@pytest.mark.parametrize("share", ["-0.1", "1.5", "nan", "half"])
def test_a_share_outside_0_to_1_is_refused(share: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused_by_the_parser(
        ["replay", "--topology", str(TOPOLOGY), "--file", "x.csv", "--max-reject-share", share], capsys
    )


def test_json_lines_that_are_no_json_show_the_record_itself() -> None:
    shown = example(7, b"not json at all", "malformed_json", "not valid UTF-8 JSON: unexpected", {})
    assert shown == {"row": 7, "record": "not json at all", "detail": "not valid UTF-8 JSON: unexpected"}
    long = example(8, b'{"user_id": "' + b"x" * 500 + b'"}', "wrong_type", "field 'user_id' must be", {})
    assert long["field"] == "user_id" and len(long["value"]) == 80 and long["value"].endswith("…")


def test_a_missing_field_is_named_with_no_value() -> None:
    shown = example(
        0, b'{"event_id": "e", "type": "view"}', "missing_field", "missing required field 'user_id'", {}
    )
    assert shown == {
        "row": 0,
        "field": "user_id",
        "value": None,
        "detail": "missing required field 'user_id'",
    }


def test_rows_set_aside_count_against_the_share() -> None:
    report = {
        "rows": 4,
        "valid": 2,
        "skipped": 5,
        "dead_letters": {"too_old": 1},
        "rejected": {"record_too_large": 1},
        "examples": {},
        "rejected_examples": {"record_too_large": [{"row": 3, "detail": "2000000 bytes"}]},
    }
    assert failing_share(report) == 0.5  # skipped rows are not rows to send
    assert verdict(report, 0.5) is None and verdict(report, 0.49) is not None
    assert "  set aside record_too_large: 1 row (2000000 bytes); first: row 3" in describe(report)
