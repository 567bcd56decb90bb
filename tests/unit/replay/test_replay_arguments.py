"""`pipeline replay`'s numbers are refused by the parser (one line naming the option, exit 2)
when they make no sense, before a broker is reached or a topic created: a negative or
not-finite --rate meant "unlimited", --partitions 0 or -1 reached topic creation, and
--disorder-ms -1 was clamped to 0 without a word (issue 24 review, item 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser
from tests.unit.refused_arguments import assert_refused_by_the_parser

TOPOLOGY = Path(__file__).resolve().parents[3] / "topologies" / "backfill.yaml"
FILE = ["replay", "--topology", str(TOPOLOGY), "--file", "events.jsonl"]
TOPIC = ["replay", "--topology", str(TOPOLOGY), "--topic", "interactions"]


@pytest.mark.parametrize(
    "argv",
    [
        [*FILE, "--rate", "-5"],
        [*FILE, "--rate", "nan"],
        [*FILE, "--rate", "inf"],
        [*FILE, "--partitions", "0"],
        [*FILE, "--partitions", "-1"],
        [*FILE, "--partitions", "two"],
        [*TOPIC, "--disorder-ms", "-1"],
        [*TOPIC, "--disorder-ms", "1.5"],
    ],
)
def test_numbers_that_make_no_sense_are_refused_before_anything_starts(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused_by_the_parser(argv, capsys)


@pytest.mark.parametrize(
    ("option", "value", "parsed"),
    [("--rate", "0", 0.0), ("--rate", "2500.5", 2500.5), ("--partitions", "1", 1), ("--disorder-ms", "0", 0)],
)
def test_the_numbers_that_do_make_sense_still_parse(option: str, value: str, parsed: float) -> None:
    args = build_parser().parse_args([*TOPIC, option, value])
    assert getattr(args, option.removeprefix("--").replace("-", "_")) == parsed
