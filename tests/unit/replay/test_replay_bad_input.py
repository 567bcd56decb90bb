"""`pipeline replay` given files it cannot use: one line naming the file and exit 2 (a bad
checkpoint or mapping, refused before anything is sent), never a traceback; a data file of
arbitrary bytes is rows for the pipeline to dead-letter, not a crash."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pipeline.cli import main

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


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_binary_data_file_is_rows_to_dead_letter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    data = tmp_path / "blob.bin"
    data.write_bytes(bytes(range(256)) * 20 + b"\n\xff\xfe\x00\n")
    assert main(replay("--file", data, "--format", fmt, "--dry-run")) == 0
    captured = capsys.readouterr()
    assert '"valid":0' in captured.out and "Traceback" not in captured.err


def test_a_file_that_breaks_off_after_a_gzip_magic_is_one_error_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(gzip.compress(b'{"user_id": 1}\n' * 100)[:40] + b"\x00garbage")
    assert main(replay("--file", data, "--dry-run")) == 1
    captured = capsys.readouterr()
    assert "events.jsonl" in captured.out and "Traceback" not in captured.err
