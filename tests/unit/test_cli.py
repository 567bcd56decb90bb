"""The command line: --version, schema, JSON logs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson
import pytest

from pipeline import logs
from pipeline.cli import main
from tests.unit.refused_arguments import assert_refused_by_the_parser


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("pipeline 0.")


def test_schema_is_the_topology_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["title"] == "Topology"
    assert {"broker", "source", "sink", "model"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_json_logs_are_one_object_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        logs.setup("INFO", "json")
        logging.getLogger("pipeline.test").info("assigned %d partitions", 4)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("pipeline.test").exception("failed")
    finally:
        logs.setup("WARNING", "text")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "assigned 4 partitions" and lines[0]["level"] == "INFO"
    assert lines[0]["logger"] == "pipeline.test" and lines[0]["ts"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exception"]


@pytest.mark.parametrize(
    "argv",
    [
        ["dev", "--events", "-5"],
        ["dev", "--events", "0"],
        ["dev", "--rate", "-1"],
        ["dev", "--timeout", "0"],
        ["dev", "--report-every", "-30"],
        ["dev", "--recycle-growth", "nan"],
        ["run", "topology.yaml", "--workers", "0"],
        ["dev", "--events", "five"],
        ["dev", "--react-share", "1.5"],
        ["resources", "topology.yaml", "--partitions", "0"],
        ["experiment", "topology.yaml", "--attribution-ms", "0"],
        ["experiment", "topology.yaml", "--attribution-ms", "-1800000"],
        ["redrive", "topology.yaml", "--reason", "too_old", "--rate", "inf"],
        ["train", "--out", "repo", "--keep-versions", "0"],
        ["train", "--out", "repo", "--min-user-items", "1"],
        ["replay", "--topology", "t.yaml", "--file", "f.csv", "--max-reject-share", "2"],
    ],
)
def test_numbers_that_make_no_sense_are_refused_before_anything_starts(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`pipeline dev --events -5` started the whole stack and exited 0."""
    assert_refused_by_the_parser(argv, capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "create", "topology.yaml", "--partitions", "0"],
        ["topics", "create", "topology.yaml", "--output-partitions", "-1"],
        ["topics", "create", "topology.yaml", "--dead-letter-partitions", "nan"],
        ["topics", "create", "topology.yaml", "--replication-factor", "0"],
    ],
)
def test_topics_create_refuses_counts_that_make_no_sense(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused_by_the_parser(argv, capsys, command="topics create")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "train: events from the synthetic generator: 100000 events, no --file/--topic given"),
        (["--synthetic", "500"], "train: events from the synthetic generator: 500 events (--synthetic)"),
        (
            ["--file", "ev.csv", "--mapping", "m.yaml"],
            "train: events from the file ev.csv, columns mapped by m.yaml",
        ),
        (
            ["--topic", "interactions"],
            "train: events from the topic interactions at 127.0.0.1:9092, its start to its end",
        ),
    ],
)
def test_train_says_where_its_events_come_from_before_reading_them(
    argv: list[str],
    said: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pipeline train --out DIR` trained on 100,000 synthetic events without saying so."""
    from pipeline.recsys import cli as train_cli

    def unreadable(args: object) -> None:
        print("reading", file=sys.stderr)
        raise OSError("the source is not read in this test")

    monkeypatch.setattr(train_cli, "read_interactions", unreadable)
    assert main(["train", "--out", str(tmp_path / "repo"), *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [said, "reading"], err


@pytest.mark.parametrize("option", [["--mapping", "m.yaml"], ["--format", "csv"]])
def test_train_file_options_without_a_file_are_one_line_and_exit_2(
    option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--mapping without --file was a SystemExit message and exit 1."""
    out = tmp_path / "repo"
    assert main(["train", "--out", str(out), *option]) == 2
    err = capsys.readouterr().err
    assert err == f"train: {option[0]} goes with --file (it describes an event file; none is given)\n"
    assert not out.exists()
