"""`pipeline replay` given files it cannot use: one line naming the file and exit 2 (a bad
checkpoint or mapping, refused before anything is sent), never a traceback; a data file of
arbitrary bytes is rows for the pipeline to dead-letter, not a crash."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from pipeline.cli import main
from pipeline.replay.checkpoint import Checkpoint

TOPOLOGY = Path(__file__).resolve().parents[3] / "topologies" / "backfill.yaml"


def replay(*args: str | Path) -> list[str]:
    return ["replay", "--topology", str(TOPOLOGY), "--progress", "log", *map(str, args)]


@pytest.mark.parametrize("content", [b"[]", b"7", b'"text"', b"null", b'{"source": 1}', b"\xff\xfe"])
def test_a_checkpoint_that_is_no_checkpoint_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(b'{"user_id": 1}\n')
    checkpoint = tmp_path / "ck.json"
    checkpoint.write_bytes(content)
    assert main(replay("--file", data, "--checkpoint", checkpoint)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ck.json: " in err and "not a replay checkpoint" in err, err


def test_a_mapping_that_is_not_utf8_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "events.csv"
    data.write_text("userId,movieId\n1,2\n")
    mapping = tmp_path / "map.yaml"
    mapping.write_bytes(b"user: \xff\xfeuser\n")
    assert main(replay("--file", data, "--mapping", mapping, "--dry-run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "map.yaml" in err and "UTF-8" in err, err


def test_a_binary_data_file_is_rows_to_dead_letter_and_the_dry_run_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every row would be dead-lettered: exit 1, no traceback."""
    data = tmp_path / "blob.bin"
    data.write_bytes(bytes(range(256)) * 20 + b"\n\xff\xfe\x00\n")
    assert main(replay("--file", data, "--format", "jsonl", "--dry-run")) == 1
    captured = capsys.readouterr()
    assert '"valid":0' in captured.out and "Traceback" not in captured.err


def test_a_binary_file_read_as_csv_has_no_columns_of_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its "header" is a run of control characters: one line naming the missing column, exit 2."""
    data = tmp_path / "blob.bin"
    data.write_bytes(bytes(range(256)) * 20 + b"\n\xff\xfe\x00\n")
    assert main(replay("--file", data, "--format", "csv", "--dry-run")) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{data}: user_id: no column 'user_id' (its columns: '\\x00"), err


def test_a_file_that_breaks_off_after_a_gzip_magic_is_one_error_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(gzip.compress(b'{"user_id": 1}\n' * 100)[:40] + b"\x00garbage")
    assert main(replay("--file", data, "--dry-run")) == 1
    captured = capsys.readouterr()
    assert "events.jsonl" in captured.out and "Traceback" not in captured.err


def _checkpoint_of(data: Path, **fields: object) -> bytes:
    """A checkpoint of this file's replay into backfill.yaml's input, with ``fields`` over it."""
    stat = data.stat()
    content: dict[str, object] = {
        "source": f"file:{data.resolve()}:{stat.st_size}:{int(stat.st_mtime)}",
        "destination": "interactions.backfill",
        "run_id": "0123456789abcdef",
        "next_row": 1,
        "partition_marks": {"0": 0},
        "source_offsets": {},
        "acknowledged": 1,
        "skipped": 0,
        "rejected": 0,
        "finished": False,
    }
    content.update(fields)
    return orjson.dumps(content)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("next_row", "x"),
        ("next_row", None),
        ("next_row", -1),
        ("next_row", 1.5),
        ("finished", "no"),
        ("finished", 0),
        ("acknowledged", True),
        ("run_id", 7),
        ("partition_marks", {"0": "x"}),
        ("partition_marks", {"zero": 0}),
        ("partition_marks", []),
        ("source_offsets", {"0": [0]}),
        ("source_offsets", {"0": [0, None]}),
        ("disorder_ms", "60s"),
    ],
)
def test_a_checkpoint_field_of_the_wrong_type_is_one_line_naming_it_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    value: object,
) -> None:
    """Issue 24 review, item 3: the shape was checked, not the types: `"next_row": "x"`,
    `null` or `"finished": "no"` loaded, and failed later with a traceback (or, "no" being
    true, a replay that never ran said it was finished)."""
    monkeypatch.setenv("PIPELINE_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    data = tmp_path / "events.jsonl"
    data.write_bytes(b'{"user_id": 1}\n')
    checkpoint = tmp_path / "ck.json"
    checkpoint.write_bytes(_checkpoint_of(data, **{field: value}))
    assert main(replay("--file", data, "--checkpoint", checkpoint)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{checkpoint}: {field}") and "not a replay checkpoint" in err, err


def test_a_checkpoint_of_the_right_types_still_loads(tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(b'{"user_id": 1}\n')
    checkpoint = tmp_path / "ck.json"
    checkpoint.write_bytes(_checkpoint_of(data, source_offsets={"1": [3, 9]}))  # no disorder_ms: old
    loaded = Checkpoint.load(checkpoint)
    assert (loaded.next_row, loaded.partition_marks, loaded.source_offsets) == (1, {0: 0}, {1: [3, 9]})
    assert loaded.disorder_ms is None and loaded.finished is False
    loaded.save(checkpoint)
    assert Checkpoint.load(checkpoint) == loaded
