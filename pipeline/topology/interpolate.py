"""``${NAME}`` in topology files: secrets and per-environment values come from the
environment, never from the YAML itself.

``${NAME}`` is replaced by the variable's value, ``${NAME:-default}`` falls back to the
default when the variable is unset or empty, ``$${`` writes a literal ``${``. Substitution
happens in string values after YAML parsing (a value cannot inject YAML structure), and a
value that is exactly one reference to a number stays a string for the schema to convert.
An unset variable without a default is an error naming the key path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UnsetVariable(Exception):
    def __init__(self, path: str, name: str) -> None:
        super().__init__(f"environment variable {name} is not set (and no ${{{name}:-default}} is given)")
        self.path = path
        self.name = name


def _substitute(text: str, env: Mapping[str, str], path: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:
            return value  # set and empty, no default: empty on purpose
        raise UnsetVariable(path, name)

    return _REFERENCE.sub(replace, text)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def interpolate(node: Any, env: Mapping[str, str], path: str = "") -> Any:
    """``node`` with every ``${NAME}`` in its string values replaced (a new structure)."""
    if isinstance(node, str):
        return _substitute(node, env, path) if "$" in node else node
    if isinstance(node, dict):
        return {key: interpolate(value, env, _join(path, str(key))) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env, _join(path, i)) for i, value in enumerate(node)]
    return node
