"""The replay's checkpoint: how far its sends are acknowledged, written atomically as it goes.

``next_row``: every row before it is acknowledged by the broker (or skipped on purpose).
Rows after it may be acknowledged too (sends overlap); to resend none of them, the
checkpoint also keeps, per destination partition, the offset after the last acknowledged row
of the prefix: a resumed replay reads the destination from there and skips the rows of its
own run it finds (``replay.run`` and ``replay.row`` headers). Sends to one partition are
acknowledged in order, so no row past the prefix can sit before those offsets.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson


@dataclass
class Checkpoint:
    source: str  # what is replayed: a file's path, size and mtime, or a topic range
    destination: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    next_row: int = 0
    partition_marks: dict[int, int] = field(default_factory=dict)  # destination partition → offset
    # a topic range: source partition → [first offset, end], located once (rows keep their numbers)
    source_offsets: dict[int, list[int]] = field(default_factory=dict)
    acknowledged: int = 0
    skipped: int = 0
    rejected: int = 0  # rows of the prefix set aside in the reject file
    finished: bool = False
    # a topic range: the --disorder-ms its span was located with (None: not a topic range yet,
    # or a checkpoint of a release that did not record it)
    disorder_ms: int | None = None

    def save(self, path: Path) -> None:
        """Write to a temporary file, fsync, rename: a kill at any point leaves the old or the new."""
        tmp = path.with_name(path.name + ".tmp")
        data = asdict(self)
        data["partition_marks"] = {str(k): v for k, v in self.partition_marks.items()}
        data["source_offsets"] = {str(k): list(v) for k, v in self.source_offsets.items()}
        with tmp.open("wb") as handle:
            handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """The checkpoint at ``path``, each field of the type it is written with: a field of
        another type (``"next_row": "x"``, ``null``, ``"finished": "no"``) is a BadField
        naming it, not a traceback later in the replay."""
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise BadField(unknown[0], "not a field of a replay checkpoint")
        for name in REQUIRED:
            if name not in data:
                raise BadField(name, "missing")
        for name, value in data.items():
            FIELDS[name](name, value)
        data["partition_marks"] = {int(k): v for k, v in data.get("partition_marks", {}).items()}
        data["source_offsets"] = {int(k): list(v) for k, v in data.get("source_offsets", {}).items()}
        return cls(**data)


class BadField(ValueError):
    """A checkpoint field missing or of the wrong type: ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise BadField(name, f"{_shown(value)}, not a text")


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadField(name, f"{_shown(value)}, not a whole number >= 0")


def _count_or_null(name: str, value: object) -> None:
    if value is not None:
        _count(name, value)


def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise BadField(name, f"{_shown(value)}, not true or false")


def _partition(name: str, key: object) -> None:
    if not isinstance(key, str) or not key.isdigit():
        raise BadField(name, f"partition {_shown(key)}, not a whole number")


def _marks(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise BadField(name, f"{_shown(value)}, not an object of partitions")
    for key, offset in value.items():
        _partition(name, key)
        _count(f"{name}.{key}", offset)


def _spans(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise BadField(name, f"{_shown(value)}, not an object of partitions")
    for key, span in value.items():
        _partition(name, key)
        if not isinstance(span, list) or len(span) != 2:
            raise BadField(f"{name}.{key}", f"{_shown(span)}, not [first offset, end]")
        for offset in span:
            _count(f"{name}.{key}", offset)


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, str | int | float | bool | None) else None
    return text[:40] if text is not None else f"a JSON {type(value).__name__}"


FIELDS = {
    "source": _text,
    "destination": _text,
    "run_id": _text,
    "next_row": _count,
    "partition_marks": _marks,
    "source_offsets": _spans,
    "acknowledged": _count,
    "skipped": _count,
    "rejected": _count,
    "finished": _flag,
    "disorder_ms": _count_or_null,
}
REQUIRED = ("source", "destination")


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to another replay (another file, range or destination), or is
    no checkpoint; ``field`` names the field at fault, if one is."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def resume_or_start(path: Path | None, source: str, destination: str) -> Checkpoint:
    """The checkpoint at ``path`` if it is this replay's, else a fresh one."""
    if path is None or not path.exists():
        return Checkpoint(source, destination)
    try:
        checkpoint = Checkpoint.load(path)
    except BadField as err:
        raise CheckpointMismatch(f"{path}: not a replay checkpoint: {err.problem}", err.field) from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointMismatch(f"{path}: not a replay checkpoint ({err})") from None
    if (checkpoint.source, checkpoint.destination) != (source, destination):
        raise CheckpointMismatch(
            f"{path}: the checkpoint is of {checkpoint.source} → {checkpoint.destination}, "
            f"not {source} → {destination} (remove it to start over)"
        )
    return checkpoint
