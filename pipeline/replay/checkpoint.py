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
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        data["partition_marks"] = {int(k): int(v) for k, v in data.get("partition_marks", {}).items()}
        data["source_offsets"] = {
            int(k): [int(v[0]), int(v[1])] for k, v in data.get("source_offsets", {}).items()
        }
        return cls(**data)


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to another replay (another file, range or destination)."""


def resume_or_start(path: Path | None, source: str, destination: str) -> Checkpoint:
    """The checkpoint at ``path`` if it is this replay's, else a fresh one."""
    if path is None or not path.exists():
        return Checkpoint(source, destination)
    try:
        checkpoint = Checkpoint.load(path)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointMismatch(f"{path}: not a replay checkpoint ({err})") from None
    if (checkpoint.source, checkpoint.destination) != (source, destination):
        raise CheckpointMismatch(
            f"{path}: the checkpoint is of {checkpoint.source} → {checkpoint.destination}, "
            f"not {source} → {destination} (remove it to start over)"
        )
    return checkpoint
