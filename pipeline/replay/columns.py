"""The columns a mapping names, checked against the columns a file has, before any row is
read: a mapping that names a column the file does not have (``item: SKU`` for a file's
``sku``) would otherwise turn every row into a ``missing_field`` dead letter, and say so
only in the counts at the end. One line names the mapping key, the column, the columns the
file has and the closest of them."""

from __future__ import annotations

import difflib
from collections.abc import Collection

from pipeline.errors import TopologyError
from pipeline.replay.mapping import ColumnMapping

SCHEMA_NAMES = "user_id, item_id, type, ts"
SHOWN_COLUMNS = 12  # a file with hundreds of columns: the line stays one line
SHOWN_NAME = 40  # characters of a column's name (a binary file's "header" is one long cell)
# The event field each mapping key's column becomes.
SCHEMA_FIELDS = {
    "user": "user_id",
    "item": "item_id",
    "timestamp.column": "ts",
    "type.column": "type",
    "type.thresholds.column": "type",
    "event_id": "event_id",
}


def named_columns(mapping: ColumnMapping, explicit: bool) -> list[tuple[str, str]]:
    """(mapping key, column) of every column the mapping reads. The event id column only if
    a mapping file names it (``explicit``): by default a row without one gets a derived id."""
    named = [("user", mapping.user), ("item", mapping.item), ("timestamp.column", mapping.timestamp.column)]
    rule = mapping.type
    if rule.column is not None:
        named.append(("type.column", rule.column))
    if rule.thresholds is not None:
        named.append(("type.thresholds.column", rule.thresholds.column))
    if mapping.event_id is not None and explicit and "event_id" in mapping.model_fields_set:
        named.append(("event_id", mapping.event_id))
    return named


def field_columns(mapping: ColumnMapping) -> dict[str, str]:
    """Event field → the file's column it comes from (a dry run's examples name both)."""
    return {SCHEMA_FIELDS[key]: column for key, column in named_columns(mapping, explicit=True)}


def closest(column: str, columns: Collection[str]) -> str | None:
    """The file's column most like ``column``: the same name in another case first (``SKU``
    for ``sku``), else difflib's closest match on lower-case names."""
    lower = {c.lower(): c for c in columns}
    if column.lower() in lower:
        return lower[column.lower()]
    match = difflib.get_close_matches(column.lower(), list(lower), n=1, cutoff=0.6)
    return lower[match[0]] if match else None


def check_columns(file: str, columns: Collection[str], mapping: ColumnMapping, explicit: bool) -> None:
    """TopologyError (exit 2) naming the first mapped column ``columns`` lacks, and any other."""
    missing = [(key, column) for key, column in named_columns(mapping, explicit) if column not in columns]
    if not missing:
        return
    if not explicit:  # without a mapping the key is the event field the column stands for
        missing = [(SCHEMA_FIELDS.get(key, key), column) for key, column in missing]
    key, column = missing[0]
    shown = ", ".join(map(_shown, list(columns)[:SHOWN_COLUMNS])) + (
        ", …" if len(columns) > SHOWN_COLUMNS else ""
    )
    if explicit:
        problem = f"the mapping names column {column!r}, which the file does not have"
    else:
        problem = f"no column {column!r}"
    problem += f" (its columns: {shown or 'none'}"
    if (near := closest(column, columns)) is not None:
        problem += f"; did you mean {near!r}?"
    problem += ")"
    if others := [f"{k}: {c!r}" if explicit else repr(c) for k, c in missing[1:]]:
        problem += f"; also missing: {', '.join(others)}"
    if not explicit:
        problem += (
            f"; without --mapping the columns carry the event schema's names ({SCHEMA_NAMES}): "
            "map the file's own with --mapping (docs/replay.md)"
        )
    raise TopologyError(file, key, problem)


def _shown(name: str) -> str:
    """A column's name as one short piece of one line (repr if it holds control characters)."""
    text = name if name.isprintable() else repr(name)
    return text if len(text) <= SHOWN_NAME else text[: SHOWN_NAME - 1] + "…"
