"""What a dry run shows besides its counts: per reason, the first rows it would dead-letter
(their numbers and the offending value), and the verdict: exit 1 when more than
``--max-reject-share`` of the rows to send would not reach the pipeline as events (a wrong
mapping, a wrong file), so a script stops before the real run fills the dead-letter topic.

Rows are numbered from 0 in file order, as in the checkpoint and the reject file (a CSV's
row 0 is the first after its header)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

EXAMPLES_PER_REASON = 3
SHOWN_CHARS = 80  # of a value or a raw record in an example
SHOWN_IN_LINE = 40  # of a raw record in the line for a person (a reason's line stays readable)
DEFAULT_MAX_SHARE = 0.5
# The event field a reason is about, when its detail does not name it ("field 'x' ...").
REASON_FIELDS = {
    "unknown_type": "type",
    "future_timestamp": "ts",
    "too_old": "ts",
    "late_event": "ts",
    "key_not_user": "user_id",
}
NAMED_FIELD = re.compile(r"field '([^']+)'")


def _clip(value: Any) -> Any:
    """A value short enough for one line: long text (or bytes, as text) cut at SHOWN_CHARS."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return value[: SHOWN_CHARS - 1] + "…"
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
        return value if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
    return value


def example(
    number: int, value: bytes | None, reason: str, detail: str, columns: Mapping[str, str]
) -> dict[str, Any]:
    """Row ``number``'s example of ``reason``: the field at fault and its value as sent (a
    mapping passes a value it cannot convert on as it was: the file's own cell) with the
    file's column for it, or the record itself when it is not a JSON object."""
    shown: dict[str, Any] = {"row": number}
    named = NAMED_FIELD.search(detail)
    field = named.group(1) if named else REASON_FIELDS.get(reason)
    try:
        doc = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        doc = None
    if field is not None and isinstance(doc, dict):
        shown["field"] = field
        if field in columns:
            shown["column"] = columns[field]
        shown["value"] = _clip(doc.get(field))
    elif value is not None:
        shown["record"] = _clip(value)
    shown["detail"] = _clip(detail)
    return shown


class Examples:
    """The first EXAMPLES_PER_REASON rows of each reason."""

    def __init__(self, columns: Mapping[str, str] | None = None) -> None:
        self.columns = columns or {}
        self.by_reason: dict[str, list[dict[str, Any]]] = {}

    def add(self, reason: str, number: int, value: bytes | None, detail: str) -> None:
        kept = self.by_reason.setdefault(reason, [])
        if len(kept) < EXAMPLES_PER_REASON:
            kept.append(example(number, value, reason, detail, self.columns))


def failing_share(report: Mapping[str, Any]) -> float:
    """Of the rows a run would send (not skipped by the mapping, inside the time range):
    the share dead-lettered or set aside in the reject file."""
    failing = sum(report["dead_letters"].values()) + sum(report["rejected"].values())
    to_send = report["valid"] + failing
    return failing / to_send if to_send else 0.0


def _example_text(shown: Mapping[str, Any]) -> str:
    if "field" in shown:
        column = shown.get("column", shown["field"])
        named = shown["field"] if column == shown["field"] else f"{shown['field']} (column {column})"
        return f"row {shown['row']}: {named} = {shown['value']!r}"
    if "record" in shown:
        record = str(shown["record"])
        return (
            f"row {shown['row']}: {record[:SHOWN_IN_LINE] + ('…' if len(record) > SHOWN_IN_LINE else '')!r}"
        )
    return f"row {shown['row']}"


# Kept from 0, not file lines: the checkpoint, the reject file, the replay.row header and
# derived event ids number rows so, and a resumed run must keep finding them.
ROW_NUMBERS = (
    "rows are numbered from 0 in file order, not file lines: the first data row (after a CSV's "
    "header) is row 0, as in the checkpoint and the reject file"
)


def describe(report: Mapping[str, Any]) -> list[str]:
    """Lines for a person: the totals, then per reason its count and first rows."""
    failing = sum(report["dead_letters"].values()) + sum(report["rejected"].values())
    lines = [
        f"dry run: {report['rows']} rows: {report['valid']} valid, "
        f"{sum(report['dead_letters'].values())} to dead-letter, "
        f"{sum(report['rejected'].values())} to set aside, {report['skipped']} skipped by the mapping"
        + (f" ({failing_share(report):.1%} of the rows to send fail)" if failing else "")
    ]
    for kind, counts, examples in (
        ("dead letter", report["dead_letters"], report.get("examples", {})),
        ("set aside", report["rejected"], report.get("rejected_examples", {})),
    ):
        for reason, count in counts.items():
            shown = examples.get(reason, [])
            first = "; ".join(_example_text(e) for e in shown)
            detail = f" ({shown[0]['detail']})" if shown else ""  # the first row's: the others' alike
            rows = "row" if count == 1 else "rows"
            lines.append(f"  {kind} {reason}: {count} {rows}{detail}; first: {first}")
    if len(lines) > 1:
        lines.append(f"  ({ROW_NUMBERS})")
    return lines


def verdict(report: Mapping[str, Any], max_share: float) -> str | None:
    """One line when too many rows would fail (exit 1), else None."""
    share = failing_share(report)
    if share <= max_share:
        return None
    return (
        f"dry run: {share:.1%} of the rows to send would be dead-lettered or set aside, more than "
        f"--max-reject-share {max_share:g}: check the mapping and the file (a real run sends them "
        "to the dead-letter topic)"
    )
