"""Event files read as a stream: JSON lines or CSV, plain or gzip-compressed (told by the
file's first bytes, not its name). Memory stays bounded whatever the file's size: one row at
a time, numbered from 0 in file order (the numbers are what a resumed replay skips by).

Without a mapping a JSON-lines file is passed on byte for byte (the pipeline dead-letters
what it cannot parse, with the reason); a CSV file needs a mapping unless its columns carry
the event schema's names (user_id, item_id, type, ts, event_id). The columns a mapping reads
are checked against the file's (a CSV's header, the keys of a JSON-lines file's first
records) before the first row: a column the file lacks is one line, exit 2 (columns.py).
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import orjson

from pipeline.errors import TopologyError
from pipeline.replay.columns import check_columns
from pipeline.replay.mapping import IDENTITY, ColumnMapping, Mapper

Format = Literal["jsonl", "csv"]
GZIP_MAGIC = b"\x1f\x8b"
CSV_FIELD_LIMIT = 1 << 20  # a cell past this is a broken file, not an event
KEYS_SAMPLE = 100  # JSON-lines records whose keys make a file's columns (one may omit a key)
csv.field_size_limit(CSV_FIELD_LIMIT)


class UnreadableFile(ValueError):
    """A file the reader cannot go on with (a broken CSV record): where and why."""


@dataclass(frozen=True)
class Row:
    """One row of a replay's source, numbered in read order: what to send."""

    number: int
    value: bytes | None  # None: not sent (the mapping skips it, or one of the two below)
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    reject: tuple[str, str] | None = None  # (reason, error): for the reject file, not sent
    outside_time_range: bool = False  # a topic range's record stamped outside [since, until)


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def file_format(path: Path, given: str | None = None) -> Format:
    """``given``, else told by the name (.csv / .tsv → csv, else JSON lines)."""
    if given in ("jsonl", "csv"):
        return given  # type: ignore[return-value]
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".gzip")]
    return "csv" if suffixes and suffixes[-1] in (".csv", ".tsv") else "jsonl"


def open_binary(path: Path) -> IO[bytes]:
    if is_gzip(path):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]  # a BinaryIO in all but name
    return path.open("rb")


class EventFile:
    """A file of events and how to turn its rows into the pipeline's events."""

    def __init__(
        self, path: str | Path, mapping: ColumnMapping | None = None, fmt: str | None = None
    ) -> None:
        self.path = Path(path)
        self.format = file_format(self.path, fmt)
        self.mapping = mapping
        self.mapper = Mapper(mapping or IDENTITY, source_tag=self.path.name.split(".")[0] or "row")
        self._columns_checked = False

    def columns(self) -> list[str] | None:
        """The file's columns: a CSV's header; for JSON lines, every key of its first
        KEYS_SAMPLE objects. None: nothing to judge by (an empty file, no object)."""
        with open_binary(self.path) as raw:
            try:
                if self.format == "csv":
                    header = next(csv.reader(_csv_text(raw), dialect=_csv_dialect(self.path)), None)
                    return [name for name in header if name] if header else None
                keys: dict[str, None] = {}  # (ordered: shown as the file has them)
                objects = 0
                for line in _lines(raw, self.path):
                    try:
                        doc = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(doc, dict):
                        keys.update(dict.fromkeys(doc))
                        objects += 1
                        if objects == KEYS_SAMPLE:
                            break
                return list(keys) if objects else None
            except csv.Error as err:
                raise UnreadableFile(f"{self.path}: its header: {err}") from err
            except READ_ERRORS as err:
                raise UnreadableFile(f"{self.path}: its first rows: {_why(err)}") from err

    def check_columns(self) -> None:
        """Every column the mapping reads is one the file has, else TopologyError (one line,
        exit 2) before a row is read. A JSON-lines file without a mapping is passed on as it
        is (the pipeline judges each line): not checked."""
        if self._columns_checked or (self.format == "jsonl" and self.mapping is None):
            return
        try:
            columns = self.columns()
        except UnreadableFile:
            return  # a file broken at its start: the read says where, as each command reports it
        if columns is None and self.format == "csv":  # else 0 rows read, and exit 0
            raise TopologyError(
                str(self.path), "header", "none: the file is empty (a CSV's first line names its columns)"
            )
        if columns is not None:
            check_columns(str(self.path), columns, self.mapping or IDENTITY, self.mapping is not None)
        self._columns_checked = True

    def documents(self, start: int = 0) -> Iterator[tuple[int, dict[str, object] | None]]:
        """(row number, column → value) from row ``start`` on; None for a line that is not
        a JSON object (CSV rows are always dicts)."""
        self.check_columns()
        with open_binary(self.path) as raw:
            if self.format == "csv":
                yield from self._csv_rows(raw, start)
                return
            for number, line in enumerate(_lines(raw, self.path)):
                if number < start:
                    continue
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield number, None
                    continue
                yield number, doc if isinstance(doc, dict) else None

    def rows(self, start: int = 0) -> Iterator[Row]:
        """The rows to send, from row ``start`` on."""
        if self.format == "jsonl" and self.mapping is None:
            with open_binary(self.path) as raw:
                for number, line in enumerate(_lines(raw, self.path)):
                    if number >= start:
                        yield Row(number, line, _user_key_of_line(line))
            return
        for number, doc in self.documents(start):
            if doc is None:  # not an object: passed on for the pipeline to dead-letter
                yield Row(number, b"<row is not a JSON object>", None)
                continue
            event = self.mapper.event(doc, number)
            if event is None:
                yield Row(number, None, None)
                continue
            user = event["user_id"]
            yield Row(number, orjson.dumps(event), str(user).encode() if user is not None else None)

    def _csv_rows(self, raw: IO[bytes], start: int) -> Iterator[tuple[int, dict[str, object]]]:
        reader = csv.DictReader(_csv_text(raw), dialect=_csv_dialect(self.path))
        number = -1
        try:
            for number, row in enumerate(reader):
                if number >= start:
                    yield number, {k: v for k, v in row.items() if k is not None}
        except csv.Error as err:
            raise UnreadableFile(f"{self.path}: line {reader.line_num} (row {number + 1}): {err}") from err
        except READ_ERRORS as err:
            raise UnreadableFile(f"{self.path}: after row {number}: {_why(err)}") from err


def _csv_text(raw: IO[bytes]) -> io.TextIOWrapper:
    # utf-8-sig: a byte-order mark (spreadsheet exports write one) is not part of the first column's name
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")


def _csv_dialect(path: Path) -> type[csv.Dialect]:
    return csv.excel_tab if ".tsv" in (s.lower() for s in path.suffixes) else csv.excel


READ_ERRORS = (OSError, EOFError, zlib.error)  # a truncated or corrupt gzip stream, a read that failed
BOM = b"\xef\xbb\xbf"


def _why(err: BaseException) -> str:
    return f"cannot read on: {err or type(err).__name__}"


def _lines(raw: IO[bytes], path: Path) -> Iterator[bytes]:
    """Non-blank lines, without their line ends (nor a byte-order mark before the first)."""
    number = -1
    try:
        for line in raw:
            stripped = line.strip()
            if number < 0:
                stripped = stripped.removeprefix(BOM).strip()
            if stripped:
                number += 1
                yield stripped
    except READ_ERRORS as err:
        raise UnreadableFile(f"{path}: after row {number}: {_why(err)}") from err


def _user_key_of_line(line: bytes) -> bytes | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    user = doc.get("user_id") if isinstance(doc, dict) else None
    return str(user).encode() if user is not None else None


def count_rows(path: Path, fmt: Format) -> int | None:
    """Rows in a file (for the progress bar's total and ETA): one pass, bounded memory; None
    if the file breaks off (the replay then says where, when it gets there)."""
    with open_binary(path) as raw:
        try:
            if fmt == "csv":
                records = csv.reader(_csv_text(raw), dialect=_csv_dialect(path))
                return max(sum(1 for record in records if record) - 1, 0)  # blank lines are no rows
            return sum(1 for _ in _lines(raw, path))
        except (csv.Error, UnreadableFile, *READ_ERRORS):
            return None
