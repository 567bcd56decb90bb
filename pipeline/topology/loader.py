"""Load a topology file: YAML → ``${NAME}`` references → environment overrides → validated,
frozen Topology. Every failure is a TopologyError naming the file, the key path and the
reason (never a value: they may be secrets)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import TopologyError
from pipeline.topology.interpolate import UnsetVariable, interpolate
from pipeline.topology.schema import Topology

# Deployment addresses change per environment; the rest of a topology does not.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "PIPELINE_BOOTSTRAP_SERVERS": ("broker", "bootstrap_servers"),
    "PIPELINE_TRITON_URL": ("model", "url"),
    "PIPELINE_METRICS_PORT": ("operations", "metrics_port"),
    "PIPELINE_OPERATIONS_BIND": ("operations", "bind"),
    "PIPELINE_STATE_DIR": ("state", "dir"),
}


def _apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, path in ENV_OVERRIDES.items():
        if var not in env:
            continue
        node = data
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break  # a section of the wrong type: leave it for validation to report
            node = child
        else:
            node[path[-1]] = env[var]


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_topology(text: str, file: str = "<string>", env: Mapping[str, str] | None = None) -> Topology:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TopologyError(file, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise TopologyError(file, "", f"expected a mapping at the top, got {type(data).__name__}")
    environment = os.environ if env is None else env
    try:
        data = interpolate(data, environment)
    except UnsetVariable as exc:
        raise TopologyError(file, exc.path, str(exc)) from None
    _apply_overrides(data, environment)
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise TopologyError(file, _format_loc(first["loc"]), first["msg"] + more) from exc


def all_problems(text: str, file: str = "<string>") -> list[TopologyError]:
    """Every problem of a file, for `pipeline validate` (parse_topology stops at the first)."""
    try:
        parse_topology(text, file)
    except TopologyError as err:
        cause = err.__cause__
        if isinstance(cause, ValidationError):
            return [TopologyError(file, _format_loc(e["loc"]), e["msg"]) for e in cause.errors()]
        return [err]
    return []


def read_topology_text(path: str | Path) -> str:
    """The file's text, UTF-8 whatever the locale; a TopologyError naming the file when it
    cannot be read or is not UTF-8 (a UTF-16 export, a binary file given by mistake)."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TopologyError(file, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TopologyError(
            file, f"line {line}", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def load_topology(path: str | Path, env: Mapping[str, str] | None = None) -> Topology:
    return parse_topology(read_topology_text(path), str(path), env)
