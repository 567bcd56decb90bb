"""A pipeline worker as a real `python -m pipeline run` process (so it can be killed, stalled
or joined to a group), with its /readyz and /metrics: used by the fault suite and the soak."""

from __future__ import annotations

import asyncio
import http.client
import os
import sys
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretBytes, SecretStr
from pydantic_core import to_jsonable_python

from pipeline import procfs
from pipeline.devstack.process import ChildProcess, free_ports
from pipeline.kafka_io import ensure_topology_topics
from pipeline.topology.schema import Topology

ROOT = Path(__file__).resolve().parents[2]


def _revealed(value: Any) -> Any:
    """Secrets in clear, and every ``${`` written ``$${``: the worker's loader interpolates
    the file again (a resolved password holding ``${`` would otherwise not survive)."""
    if isinstance(value, SecretStr | SecretBytes):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(item) for item in value]
    return value


def topology_document(topology: Topology) -> dict[str, Any]:
    """The topology as YAML-able data a worker can load, secrets included: model_dump(mode=
    "json") writes each SecretStr as "**********", which the worker would then present as
    its password. Holds secrets in clear: written to the worker's own file (mode 0600),
    never logged."""
    return dict(to_jsonable_python(_revealed(topology.model_dump(mode="python"))))


class PipelineProcess(ChildProcess):
    """`python -m pipeline run` on a topology written to a file, with /readyz polled."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        name: str = "pipeline",
        workers: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``workers`` > 1: `pipeline run --workers N`, worker i on ``metrics_port + i``;
        ``env``: added to this process's environment."""
        self.metrics_port = free_ports(workers)
        self.metrics_ports = [self.metrics_port + i for i in range(workers)]
        self.topology = topology
        data = topology_document(topology)  # secrets in clear: not to be logged
        data["operations"]["metrics_port"] = self.metrics_port
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{name}.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(fd, 0o600)  # a file left by an earlier run keeps its mode otherwise
            file.write(yaml.safe_dump(data))
        argv = [sys.executable, "-m", "pipeline", "run", str(path)]
        super().__init__(
            name,
            argv + (["--workers", str(workers)] if workers > 1 else []),
            workdir / f"{name}.log",
            cwd=ROOT,
            env={**os.environ, **env} if env else None,
        )

    def ready(self) -> bool:
        """Every worker's /readyz answers 200."""
        for port in self.metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status != 200:
                        return False
            except (OSError, http.client.HTTPException):  # not listening yet: a connect to a free
                return False  # local port can meet itself and read its own request back
        return True

    def metrics(self) -> str:
        """The exposition of every worker, one after the other (counters add up by line)."""
        texts = []
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                texts.append(str(resp.read().decode()))
        return "".join(texts)

    def start_ready(self, timeout: float = 60.0) -> None:
        """Its topics first, as a deployment creates them (`pipeline run` stops at start on
        a missing one), then the process, until every worker is ready."""
        with ThreadPoolExecutor(1) as thread:  # a caller may be inside an event loop itself
            thread.submit(asyncio.run, ensure_topology_topics(self.topology)).result(timeout)
        self.start()
        self.wait_until(self.ready, timeout, "ready")

    @property
    def stop_grace_s(self) -> float:
        """How long a SIGTERM may take: the drain, closing the clients (the CLI's 5 s margin
        before its own hard exit) and the interpreter's exit."""
        return self.topology.source.drain_timeout_ms / 1000.0 + 5.0 + 5.0

    def rss_mb(self) -> float | None:
        return procfs.rss_mb(self.pid) if self.alive() else None
