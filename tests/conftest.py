"""Session fixtures: the real broker (Tansu) and the real Triton, started once per test
session and stopped by PID at the end. Tests use fresh topic names instead of restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.devstack.stack import EmbeddedStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    workdir = tmp_path_factory.mktemp("stack")
    started = EmbeddedStack.start(workdir, workdir / "model_repository")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
