"""Column mapping: how a row of a user's export (CSV or JSON lines with their own field
names and value scales) becomes an interaction event of the pipeline's schema.

A mapping file (YAML) names the user, item and timestamp columns, how the event type is
derived, and optionally the event-id column:

    user: userId
    item: movieId
    timestamp: {column: timestamp, unit: s}        # s, ms or iso
    type:                                          # one of: column+values, thresholds, constant
      thresholds: {column: rating, at_least: {purchase: 4.5, click: 3.5}, otherwise: view}
    event_id: null                                 # none: a stable id derived from the row

The mapper never judges an event: a value it cannot convert is passed on as it was, so the
pipeline's own parse rules (and a dry run, which applies them) give the dead-letter reason.
Ids may be integers or strings (pipeline/ids.py): a column's "18" is item 18, "SKU-00018"
and "0018" are string ids, given back as they are.
Rows a mapping drops on purpose (``otherwise: skip``) are counted as skipped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import TopologyError
from pipeline.events import EVENT_TYPES

SKIP = "skip"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimestampColumn(_Strict):
    column: str = "ts"
    unit: Literal["s", "ms", "iso"] = Field("ms", description="epoch seconds, epoch ms, or ISO 8601 text")


class TypeFromValues(_Strict):
    column: str
    values: dict[str, str] = Field(description="column value → event type (or skip)")
    otherwise: str | None = Field(None, description="type for other values (none: passed on as is)")


class Thresholds(_Strict):
    column: str
    at_least: dict[str, float] = Field(description="event type → lowest value that gives it (highest wins)")
    otherwise: str = Field(SKIP, description="type below every threshold (or skip)")


class TypeRule(_Strict):
    """Exactly one of: a column with a value map, thresholds on a numeric column, a constant."""

    column: str | None = None
    values: dict[str, str] | None = None
    otherwise: str | None = None
    thresholds: Thresholds | None = None
    constant: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> TypeRule:
        ways = [self.column is not None, self.thresholds is not None, self.constant is not None]
        if sum(ways) != 1:
            raise ValueError("give exactly one of: column (with values), thresholds, constant")
        if self.column is None and (self.values is not None or self.otherwise is not None):
            raise ValueError("values and otherwise go with column")
        targets = [self.constant, self.otherwise, *(self.values or {}).values()]
        if self.thresholds is not None:
            targets += [self.thresholds.otherwise, *self.thresholds.at_least]
        for target in targets:
            if target is not None and target not in EVENT_TYPES | {SKIP}:
                raise ValueError(
                    f"{target!r} is not an event type ({', '.join(sorted(EVENT_TYPES))}) or skip"
                )
        return self


class ColumnMapping(_Strict):
    user: str = "user_id"
    item: str = "item_id"
    timestamp: TimestampColumn = TimestampColumn()
    type: TypeRule = TypeRule(column="type")
    event_id: str | None = Field(
        "event_id", description="column of the event id (none: derived from the row)"
    )


IDENTITY = ColumnMapping()


def load_mapping(path: str | Path) -> ColumnMapping:
    """A mapping file, validated; errors name the file, the key path and the reason."""
    file = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(file, "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TopologyError(file, "", f"not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(file, "", f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise TopologyError(file, "", f"expected a mapping at the top, got {type(data).__name__}")
    try:
        return ColumnMapping.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise TopologyError(file, loc, first["msg"]) from exc


class Mapper:
    """Rows (dicts of column → value) → event documents of the pipeline's schema."""

    def __init__(self, mapping: ColumnMapping, source_tag: str) -> None:
        self.mapping = mapping
        self.source_tag = source_tag
        rule = mapping.type
        self._thresholds = (
            sorted(rule.thresholds.at_least.items(), key=lambda kv: -kv[1]) if rule.thresholds else []
        )

    def event(self, row: Mapping[str, Any], row_number: int) -> dict[str, Any] | None:
        """The event document of ``row`` (None: the mapping skips it)."""
        m = self.mapping
        kind = self._type(row)
        if kind == SKIP:
            return None
        event_id = row.get(m.event_id) if m.event_id else None
        if event_id is None or event_id == "":
            event_id = self.derived_id(row, row_number)
        return {
            "event_id": str(event_id),
            "user_id": to_id(row.get(m.user)),
            "item_id": to_id(row.get(m.item)),
            "type": kind,
            "ts": to_epoch_ms(row.get(m.timestamp.column), m.timestamp.unit),
        }

    def derived_id(self, row: Mapping[str, Any], row_number: int) -> str:
        """Stable across runs of the same file: the source, the row's place and content."""
        digest = hashlib.blake2b(digest_size=10)
        digest.update(f"{self.source_tag}\x1f{row_number}\x1f".encode())
        digest.update(orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str))
        return f"{self.source_tag}-{row_number}-{digest.hexdigest()}"

    def _type(self, row: Mapping[str, Any]) -> Any:
        rule = self.mapping.type
        if rule.constant is not None:
            return rule.constant
        if rule.thresholds is not None:
            value = to_float(row.get(rule.thresholds.column))
            if value is None:
                return row.get(rule.thresholds.column)  # passed on: the pipeline names the problem
            for kind, lowest in self._thresholds:
                if value >= lowest:
                    return kind
            return rule.thresholds.otherwise
        assert rule.column is not None
        value = row.get(rule.column)
        if rule.values is not None:
            mapped = rule.values.get(str(value))
            if mapped is not None:
                return mapped
        return rule.otherwise if rule.otherwise is not None else value


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what an event can carry (orjson writes no wider int)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _int64(number: int, original: Any) -> Any:
    """``number`` if it fits an event; else the value as it was (the pipeline names the problem)."""
    return number if INT64_MIN <= number <= INT64_MAX else original


def to_int(value: Any) -> Any:
    """Integers and their text ("42", "42.0") as int; anything else unchanged."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return _int64(int(value), value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return _int64(int(text), value)
        except ValueError:
            number = to_float(text)
            if number is not None and number.is_integer():
                return _int64(int(number), value)
    return value


def to_id(value: Any) -> Any:
    """A user or item id (pipeline/ids.py): an integer, its text ("18") or a spreadsheet's
    number ("18.0") as the integer; any other text ("cust-18", "0018": a code keeps its
    zeros) stripped of surrounding spaces, as a string id; anything else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0")):
            return _int64(int(text), value)
        number = to_float(text) if not text.isdigit() else None
        if number is not None and number.is_integer() and not text.startswith("0"):
            return _int64(int(number), value)
        return text
    return to_int(value)


def to_float(value: Any) -> float | None:
    """A finite number (NaN and infinities are not numbers a mapping can use), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def iso_to_epoch_ms(text: str) -> int:
    """ISO 8601 text as epoch ms, exactly (naive text is UTC); ValueError if it is not."""
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - EPOCH) // timedelta(milliseconds=1)


def to_epoch_ms(value: Any, unit: str) -> Any:
    """Epoch ms from seconds, ms or ISO 8601 text (naive text is UTC); else unchanged."""
    if unit == "iso":
        if not isinstance(value, str):
            return value
        try:
            return iso_to_epoch_ms(value)
        except ValueError:
            return value
    number = to_float(value)
    if number is None:
        return value
    return _int64(round(number * 1000) if unit == "s" else int(number), value)
