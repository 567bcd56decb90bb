"""The replay's reject file: rows it cannot deliver, one JSON line each, so that a bad row is
counted and set aside instead of stopping the replay for good (every resume would stop on
the same row, and editing the file forces ``--restart``: every row sent again).

Two kinds of row end here:

- ``record_too_large``: the producer refuses the row at ``send`` (larger than its
  ``max_request_size``, 1 MiB: ``MessageSizeTooLargeError``);
- ``undecodable_record``: a topic replay's source record that the Kafka client cannot decode
  (a header key that is not UTF-8, a bad CRC). The pipeline dead-letters such a record with
  the same reason; the replay cannot send it on (it has no copy of it), so its coordinates
  (``source``, ``topic:partition:offset``) are what the line holds.

Each line: ``run`` (the replay's run id), ``row`` (its number), ``reason``, ``error``, and what
is known of the row: ``source``, ``key``, ``value`` (UTF-8 text, else ``key_base64`` /
``value_base64``) and ``headers``. The file sits beside the checkpoint
(``<checkpoint stem>.rejects.jsonl``) unless ``--rejects`` names it. Lines are flushed as they
are written and fsynced before each checkpoint save, so a checkpoint never passes a rejected
row whose line could be lost. A resumed run re-reads the rows past its checkpoint, some of
which an interrupted attempt may have rejected already: those (same run, same row) are not
written twice. ``--restart`` removes the file with the checkpoint.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

MAX_REQUEST_BYTES = 1_048_576  # the replay producer's max_request_size (aiokafka's default)
TOO_LARGE = "record_too_large"
UNDECODABLE = "undecodable_record"
# Errors of ``send`` that refuse the row itself (not the broker or the connection): retrying
# it can only fail the same way.
REFUSED: tuple[type[KafkaError], ...] = (MessageSizeTooLargeError, RecordTooLargeError)


def rejects_path(checkpoint: Path) -> Path:
    """The reject file beside a checkpoint: ``ck.json`` → ``ck.rejects.jsonl``."""
    return checkpoint.with_name(f"{checkpoint.stem}.rejects.jsonl")


def _bytes_fields(name: str, data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode()}


class RejectFile:
    """Appends rejected rows to ``path`` (created on the first one)."""

    def __init__(self, path: Path, run_id: str, next_row: int = 0) -> None:
        self.path = path
        self.run_id = run_id
        self._handle: IO[bytes] | None = None
        self._dirty = False
        # rows of this run past the checkpoint that an interrupted attempt wrote already
        self._written: set[int] = set()
        if path.exists():
            with path.open("rb") as existing:
                for line in existing:
                    try:
                        doc = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a line a kill cut short
                    if isinstance(doc, dict) and doc.get("run") == run_id:
                        row = doc.get("row")
                        if isinstance(row, int) and row >= next_row:
                            self._written.add(row)

    def add(
        self,
        number: int,
        reason: str,
        error: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        """One line for row ``number`` (none if this run wrote it already)."""
        if number in self._written:
            return
        doc: dict[str, Any] = {"run": self.run_id, "row": number, "reason": reason, "error": error}
        shown = dict(headers)
        if "replay.from" in shown:
            doc["source"] = shown["replay.from"].decode(errors="replace")
        doc.update(_bytes_fields("key", key))
        doc.update(_bytes_fields("value", value))
        if headers:
            doc["headers"] = [
                [k, v.decode()] if _is_utf8(v) else [k, {"base64": base64.b64encode(v).decode()}]
                for k, v in headers
            ]
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
            if self._handle.tell() and not _ends_a_line(self.path):
                self._handle.write(b"\n")  # after a line a kill cut short: ours start afresh
        self._handle.write(orjson.dumps(doc) + b"\n")
        self._handle.flush()
        self._dirty = True
        self._written.add(number)

    def sync(self) -> None:
        """To disk, before a checkpoint that passes the rows written is saved."""
        if self._handle is not None and self._dirty:
            os.fsync(self._handle.fileno())
            self._dirty = False

    def close(self) -> None:
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
