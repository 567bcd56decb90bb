"""Session fixtures: the real broker (Tansu) and the real Triton, started once per test
session and stopped by PID at the end. Tests use fresh topic names instead of restarts.

Markers by folder, so `-m` selects what the folders hold: everything under tests/integration/
is `integration`, under tests/faults/ `fault` and `integration` (they start the same
processes), under tests/deployment/ `deployment`. tests/unit/ and tests/operators/ start no
process and get none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.devstack.stack import EmbeddedStack
from tests.idle_stream import STREAMS, IdleStream

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {
    "integration": ("integration",),
    "faults": ("fault", "integration"),
    "deployment": ("deployment",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        for marker in FOLDER_MARKERS.get(folder, ()):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    workdir = tmp_path_factory.mktemp("stack")
    started = EmbeddedStack.start(workdir, workdir / "model_repository")
    idle = STREAMS[id(started)] = IdleStream(started.triton.grpc_url)  # the keepalive test's
    try:
        idle.start()
        yield started
    finally:
        try:
            idle.close()
        finally:
            started.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
