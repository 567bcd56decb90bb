"""What `pipeline dev` tells a person at start so the stack can be watched: where the broker,
Triton and the operations endpoint answer, where the logs go, and the running topology
written into the workdir, for the other commands (tail, audit, replay, redrive) to use."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import yaml

from pipeline.devstack.process import free_port
from pipeline.topology.loader import parse_topology, read_topology_text
from pipeline.topology.schema import Topology

if TYPE_CHECKING:  # the CLI imports this module at start: no model training code then
    from pipeline.devstack.stack import EmbeddedStack

# Free on a machine by default (not Prometheus' 9090-9100 exporters, not the deployment's
# 9400): when it is taken, dev serves on a free port and says which.
DEV_METRICS_PORT = 9490
RUNNING_TOPOLOGY = "topology.yaml"  # in the workdir, while dev runs


class MetricsPortTaken(Exception):
    """The metrics port asked for (flag, environment or topology) is in use."""


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def dev_metrics_port(requested: int | None, topology: Topology) -> int:
    """The port dev serves /metrics and the probes on (0: none): ``requested`` (--metrics-port)
    if given, else the topology's (operations.metrics_port, PIPELINE_METRICS_PORT), else
    DEV_METRICS_PORT or, if that is taken, a free one. A port asked for that is taken raises
    MetricsPortTaken."""
    bind = topology.operations.bind
    port = requested if requested is not None else topology.operations.metrics_port
    if port:
        if not bindable(port, bind):
            where = "--metrics-port" if requested is not None else "operations.metrics_port"
            raise MetricsPortTaken(f"{where} {port}: in use on {bind}")
        return port
    if requested == 0:
        return 0
    return DEV_METRICS_PORT if bindable(DEV_METRICS_PORT, bind) else free_port()


# What dev puts its own stack's value in (dev_topology): a ${NAME} there needs no value.
DEV_REPLACES = {
    ("broker", "bootstrap_servers"): "PIPELINE_BOOTSTRAP_SERVERS",
    ("model", "url"): "PIPELINE_TRITON_URL",
}


def load_dev_topology(path: Path, env: Mapping[str, str]) -> Topology:
    """The topology at ``path`` as dev runs it: the environment's ``${NAME}``s and PIPELINE_*
    overrides, the addresses dev replaces (DEV_REPLACES) taken from ``env`` before the
    references are read, so that an unset ${NAME} there is no error."""
    text = read_topology_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # parse_topology says what is wrong, with the line
    if isinstance(data, dict):
        for (section, key), var in DEV_REPLACES.items():
            if isinstance(data.get(section), dict) and var in env:
                data[section][key] = env[var]
        text = yaml.safe_dump(data, sort_keys=False)
    return parse_topology(text, str(path), env)


def metrics_listener(port: int, requested: int | None, topology: Topology) -> socket.socket | None:
    """``port`` (from dev_metrics_port) bound and listening now, before the stack starts, and
    handed to the endpoint: a port taken meanwhile (two dev runs starting together) is
    MetricsPortTaken here, not a traceback once the stack runs. A default port taken
    meanwhile gives way to a free one. None for port 0 (no endpoint)."""
    if port == 0:
        return None
    bind = topology.operations.bind
    chosen = requested is not None or bool(topology.operations.metrics_port)
    for candidate in (port,) if chosen else (port, free_port()):
        try:
            return socket.create_server((bind, candidate))
        except OSError:
            continue
    where = "--metrics-port" if requested is not None else "operations.metrics_port"
    raise MetricsPortTaken(f"{where} {port}: in use on {bind}")


@dataclass(frozen=True)
class Addresses:
    broker: str
    triton: str
    metrics_url: str | None
    broker_log: Path
    triton_log: Path
    topology: Path

    @classmethod
    def of(cls, stack: EmbeddedStack, topology: Topology, workdir: Path) -> Addresses:
        ops = topology.operations
        host = "127.0.0.1" if ops.bind in ("0.0.0.0", "") else ops.bind
        url = f"http://{host}:{ops.metrics_port}" if ops.metrics_port else None
        return cls(
            stack.broker.bootstrap,
            stack.triton.grpc_url,
            url,
            stack.broker.log_path,
            stack.triton.log_path,
            workdir / RUNNING_TOPOLOGY,
        )

    def lines(self, topology: Topology, default_workdir: bool) -> list[str]:
        tail = "pipeline tail" if default_workdir else f"pipeline tail --workdir {self.topology.parent}"
        metrics = (
            f"{self.metrics_url}/metrics  (live page {self.metrics_url}/; probes /livez /startupz /readyz)"
            if self.metrics_url
            else "not served (--metrics-port 0)"
        )
        return [
            "pipeline dev: the embedded stack",
            f"  broker    {self.broker}  (log: {self.broker_log})",
            f"  triton    {self.triton} gRPC  (log: {self.triton_log})",
            f"  metrics   {metrics}",
            f"  topology  {self.topology}  (the running one: for pipeline audit, replay, redrive, tail)",
            f"  topics    in {', '.join(topology.source.topics)}; out {topology.sink.topic}; "
            f"dead letters {topology.sink.dead_letter_topic}",
            f"  watch     {tail} {topology.sink.topic}",
        ]

    def announce(self, topology: Topology, default_workdir: bool, out: TextIO = sys.stderr) -> None:
        print("\n".join(self.lines(topology, default_workdir)), file=out, flush=True)


def write_running_topology(topology: Topology, path: Path) -> None:
    """The topology dev runs, addresses filled in, readable by the owner only (a topology
    may hold secrets). Replaced whole: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(
            f"# written by `pipeline dev` (pid {os.getpid()}) while it runs: its broker, Triton and topics\n"
        )
        yaml.safe_dump(topology.model_dump(mode="json"), file, sort_keys=False)
    os.replace(partial, path)


_WRITER = re.compile(r"# written by `pipeline dev` \(pid (\d+)\)")


def gone_writer(path: Path) -> int | None:
    """The pid of the `pipeline dev` that wrote the running topology at ``path`` if it is no
    longer running (killed: SIGKILL leaves the file behind); None if it runs or is unknown."""
    try:
        with path.open() as file:
            match = _WRITER.match(file.readline())
    except OSError:
        return None
    if match is None:
        return None
    pid = int(match.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        return None  # another user's process has that pid now: not ours to judge
    return None
