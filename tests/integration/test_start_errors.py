"""`pipeline run` with nothing answering at start (issue 27, start errors in one line): the
broker is checked first, for at most ``broker.start_timeout_ms``, then Triton, for at most
``model.start_timeout_ms``; past either bound the process exits 2 with one line naming the
key and the address, and no traceback. A Triton that comes up within the bound is no
error: the start waits for it and then serves. Each run sets small bounds."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.audit import Ledger
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.topology import SHIPPED, topology_on_stack
from pipeline.testing.builders import keyed_event
from pipeline.topology.schema import Topology
from tests.integration.harness import ROOT, create_topics, produce_raw, read_values, run_pipeline_command

pytestmark = pytest.mark.integration

STARTUP_S = 15.0  # the interpreter and imports on a loaded machine, the stop after the line


def closed_port() -> int:
    """A port nothing listens on (bound once to be free, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lines_of(stderr: str) -> list[str]:
    return stderr.strip().splitlines()


def write_topology(tmp_path: Path, data: dict[str, Any]) -> Path:
    data.setdefault("operations", {})["metrics_port"] = 0  # no port shared with other tests
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_no_broker_answering_is_one_line_and_exit_2_within_the_bound(tmp_path: Path, workers: int) -> None:
    """Triton is on a closed port too: the broker is checked before anything waits on it."""
    broker_port, triton_port = closed_port(), closed_port()
    data = yaml.safe_load(SHIPPED.read_text())
    data["broker"].update({"bootstrap_servers": f"127.0.0.1:{broker_port}", "start_timeout_ms": 2_000})
    data["model"]["url"] = f"127.0.0.1:{triton_port}"
    path = write_topology(tmp_path, data)

    started = time.monotonic()
    done = run_pipeline_command("run", path, "--workers", str(workers), timeout_s=2 + STARTUP_S + 10)
    took = time.monotonic() - started

    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert 2 <= took < 2 + STARTUP_S, done.stderr[-3000:]  # waited its bound, and no longer
    said = (
        f"pipeline stopped: broker.bootstrap_servers: nothing answers at 127.0.0.1:{broker_port} "
        "(connection refused: nothing listening); waited 2 s (broker.start_timeout_ms)"
    )
    lines = lines_of(done.stderr)
    assert lines[-1] == said if workers == 1 else said in lines, done.stderr
    assert 1 <= lines.count(said) <= workers, done.stderr  # a worker the stop reached first: none
    assert "model.url" not in done.stderr and "Triton" not in done.stderr  # nothing waited on it
    # Every other line says something of its own: what is waited for, or what the supervisor did.
    meaningful = (
        f"broker.bootstrap_servers: nothing answers at 127.0.0.1:{broker_port} yet: waiting up to 2 s",
        "pipeline.workers: worker ",  # started (pid n); exited 2 (configuration): stopping every worker
        "SIGTERM: draining",  # a worker still waiting when that stop came
    )
    for line in lines:
        assert line == said or any(m in line for m in meaningful), line
    if workers > 1:  # the first exit 2 at start stopped the others
        assert any(line.endswith("exited 2 (configuration): stopping every worker") for line in lines)


async def test_triton_not_answering_is_one_line_naming_model_url_after_the_start_timeout(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    triton = f"127.0.0.1:{closed_port()}"
    data = topology_on_stack(stack, model={"url": triton, "start_timeout_ms": 3_000})
    await create_topics(Topology.model_validate(data))
    path = write_topology(tmp_path, data)

    started = time.monotonic()
    done = run_pipeline_command("run", path, timeout_s=3 + STARTUP_S + 10)
    took = time.monotonic() - started

    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert 3 <= took < 3 + STARTUP_S, done.stderr[-3000:]
    *waiting, last = lines_of(done.stderr)
    assert last.startswith(
        f"pipeline stopped: model.url: Triton at {triton} did not serve model 'recommender' "
        "(version latest) within 3 s (model.start_timeout_ms): asked "
    ), last
    assert "the last answer UNAVAILABLE" in last and "Connection refused" in last, last
    assert waiting, done.stderr  # the wait said what it waits for, while it waited
    for line in waiting:
        assert f"model.url: Triton at {triton} has not served model 'recommender'" in line, line


class LateProxy:
    """A TCP port that refuses connections (nothing listening) until ``open`` is called, then
    forwards each connection to ``target``: Triton coming up late, as in a rolling deploy."""

    def __init__(self, target: str) -> None:
        self.port = closed_port()
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def _forward(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.target_port)
        for r, w in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(r, w))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


TRITON_LATE_S = 4.0


async def test_triton_answering_late_within_the_start_timeout_is_waited_for_then_served(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    proxy = LateProxy(stack.triton.grpc_url)
    triton = f"127.0.0.1:{proxy.port}"
    data = topology_on_stack(stack, model={"url": triton, "start_timeout_ms": 60_000})
    topology = Topology.model_validate(data)
    await create_topics(topology)
    path = write_topology(tmp_path, data)
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(path)], cwd=ROOT, stderr=stderr, text=True
        )
    try:
        await produce_raw(topology, [keyed_event(user_id=7, item_id=3)], Ledger())
        await asyncio.sleep(TRITON_LATE_S)
        assert proc.poll() is None, stderr_path.read_text()[-3000:]  # still waiting, not exited
        await proxy.open()
        deadline = time.monotonic() + 60
        outputs: list[Any] = []
        while not outputs and time.monotonic() < deadline and proc.poll() is None:
            outputs = await read_values(topology, topology.sink.topic)
            await asyncio.sleep(0.5)
        assert len(outputs) == 1, stderr_path.read_text()[-3000:]  # served once Triton came
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        await proxy.close()
    said = stderr_path.read_text()
    assert code == 0, said[-3000:]
    assert "Traceback" not in said and "pipeline stopped" not in said, said[-3000:]
    assert f"model.url: Triton at {triton} has not served model 'recommender' (version latest) yet" in said
