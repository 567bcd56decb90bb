"""`pipeline bench` hands its arguments to scripts/bench, run as a process of
its own (here with --help, so no stack starts)."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def test_bench_passes_its_options_on_to_the_benchmark_script(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0  # the script's own --help, not pipeline's
    out = capfd.readouterr().out
    assert "python scripts/bench [--events" in out and "--smoke" in out and "--variants" in out
