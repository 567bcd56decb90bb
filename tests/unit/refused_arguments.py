"""What `pipeline`'s parser does with a number that makes no sense, shared by the tests of
each command's options (tests/unit/test_cli.py, tests/unit/replay/test_replay_arguments.py)."""

from __future__ import annotations

import pytest

from pipeline.cli import build_parser


def assert_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str], command: str | None = None
) -> None:
    """``pipeline ARGV`` ends in the parser, before anything starts: exit 2 and one last
    line naming the command (``argv[0]`` unless given: ``topics create``), the option
    (``argv[-2]``) and the value refused (``argv[-1]``)."""
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"pipeline {command or argv[0]}: error: argument {argv[-2]}: "), last
    assert argv[-1] in last
