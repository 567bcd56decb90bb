"""A mapping that names a column the file does not have (`item: SKU` for a file's `sku`) gave
`missing_field: 500` and exit 0 (issue 27, item 4): the columns a mapping reads are now
checked against the file's (a CSV's header, the keys of a JSON-lines file's first records)
before a row is read or a broker reached: one line naming the mapping key, the column, the
file's columns and the closest of them, exit 2."""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import TopologyError
from pipeline.replay.columns import check_columns, closest, field_columns
from pipeline.replay.files import EventFile
from pipeline.replay.mapping import ColumnMapping, load_mapping

TOPOLOGY = Path(__file__).resolve().parents[3] / "topologies" / "backfill.yaml"
MAPPING = """\
user: customer
item: SKU
timestamp: {column: ts, unit: s}
type: {constant: purchase}
event_id: null
"""


def replay(*args: str | Path) -> list[str]:
    return ["replay", "--topology", str(TOPOLOGY), "--progress", "log", *map(str, args)]


@pytest.fixture
def nothing_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    """The topology's broker on a closed port: a check that reached for it would hang or fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PIPELINE_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text("customer,sku,ts\n1,2,1700000000\n3,4,1700000001\n")
    return path


@pytest.fixture
def mapping(tmp_path: Path) -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(MAPPING)
    return path


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_mapped_column_the_csv_lacks_is_one_line_and_exit_2_before_the_broker(
    export: Path,
    mapping: Path,
    nothing_listening: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool,
) -> None:
    monkeypatch.chdir(export.parent)  # where a checkpoint would go
    started = time.monotonic()
    code = main(replay("--file", export, "--mapping", mapping, *(["--dry-run"] if dry_run else [])))
    assert code == 2
    assert time.monotonic() - started < 5  # no broker reached, no row read
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{export}: item: the mapping names column 'SKU', which the file does not have "
        "(its columns: customer, sku, ts; did you mean 'sku'?)\n"
    )
    assert not (export.parent / ".pipeline-replay").exists()


def test_state_build_checks_the_columns_before_the_broker(
    export: Path, mapping: Path, nothing_listening: None, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = TOPOLOGY.with_name("recommendations.yaml")
    code = main(
        ["state", "build", "--topology", str(topology), "--file", str(export), "--mapping", str(mapping)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{export}: item: the mapping names column 'SKU'") and err.count("\n") == 1, err


def test_a_file_broken_at_its_start_is_left_to_the_read_to_report(tmp_path: Path, mapping: Path) -> None:
    """The commands report a broken file where they read it (exit 1, naming the row)."""
    path = tmp_path / "orders.csv"
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 20)  # a gzip magic, then no gzip
    EventFile(path, load_mapping(mapping)).check_columns()


def test_a_gzipped_csv_and_every_missing_column_named(tmp_path: Path, mapping: Path) -> None:
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbfclient,sku,when\n1,2,3\n"))  # with a byte-order mark
    with pytest.raises(TopologyError) as refused:
        EventFile(path, load_mapping(mapping)).check_columns()
    assert refused.value.path == "user"
    assert "column 'customer'" in refused.value.problem
    assert "its columns: client, sku, when" in refused.value.problem
    assert "also missing: item: 'SKU', timestamp.column: 'ts'" in refused.value.problem


def test_json_lines_are_judged_by_the_keys_of_their_first_records(tmp_path: Path, mapping: Path) -> None:
    """A key the first record omits is there if a later one of the first records has it."""
    path = tmp_path / "orders.jsonl"
    path.write_text('not json\n{"customer": 1, "ts": 1}\n{"customer": 2, "SKU": 7, "ts": 2}\n')
    EventFile(path, load_mapping(mapping)).check_columns()  # no error
    path.write_text('{"customer": 1, "sku": 7, "ts": 1}\n')
    with pytest.raises(TopologyError, match=r"column 'SKU'.*did you mean 'sku'"):
        EventFile(path, load_mapping(mapping)).check_columns()


def test_json_lines_without_a_mapping_are_not_checked(tmp_path: Path) -> None:
    """They are passed on byte for byte: the pipeline judges each line, with its reason."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"userId": 1}\n')
    EventFile(path).check_columns()


def test_a_csv_without_a_mapping_needs_the_schemas_names(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,item_id,type,ts\n1,2,view,3\n")
    with pytest.raises(TopologyError) as refused:
        EventFile(path).check_columns()
    assert refused.value.path == "user_id"
    assert refused.value.problem.startswith("no column 'user_id' (its columns: userId, item_id, type, ts;")
    assert "did you mean 'userId'?" in refused.value.problem and "--mapping" in refused.value.problem
    # the event id is derived when a file has none: not a column it must have
    path.write_text("user_id,item_id,type,ts\n1,2,view,3\n")
    EventFile(path).check_columns()


def test_reading_the_documents_checks_the_columns_first(export: Path, mapping: Path) -> None:
    """`pipeline train --file` and `pipeline state build` read through documents(): the same check."""
    documents = EventFile(export, load_mapping(mapping)).documents()
    with pytest.raises(TopologyError, match="column 'SKU'"):
        next(documents)


def test_every_column_a_mapping_reads_is_checked() -> None:
    explicit = ColumnMapping.model_validate(
        {
            "user": "u",
            "item": "i",
            "timestamp": {"column": "t"},
            "type": {"thresholds": {"column": "rating", "at_least": {"click": 3}}},
            "event_id": "order",
        }
    )
    assert field_columns(explicit) == {
        "user_id": "u",
        "item_id": "i",
        "ts": "t",
        "type": "rating",
        "event_id": "order",
    }
    check_columns("f.csv", ["u", "i", "t", "rating", "order"], explicit, explicit=True)
    with pytest.raises(TopologyError, match=r"f.csv: event_id: the mapping names column 'order'"):
        check_columns("f.csv", ["u", "i", "t", "rating"], explicit, explicit=True)
    with pytest.raises(TopologyError, match=r"f.csv: type.thresholds.column: .*'rating'"):
        check_columns("f.csv", ["u", "i", "t", "order"], explicit, explicit=True)


def test_a_file_with_many_columns_stays_one_short_line() -> None:
    columns = [f"column_{n}" for n in range(500)]
    with pytest.raises(TopologyError) as refused:
        check_columns("wide.csv", columns, ColumnMapping(), explicit=False)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 600 and "column_11, …" in message


@pytest.mark.parametrize(
    ("column", "columns", "expected"),
    [("SKU", ["sku", "ts"], "sku"), ("userid", ["user_id", "ts"], "user_id"), ("price", ["sku", "ts"], None)],
)
def test_the_closest_column_is_suggested(column: str, columns: list[str], expected: str | None) -> None:
    assert closest(column, columns) == expected


@pytest.mark.parametrize("content", [b"", b"\n\n"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_empty_csv_has_no_header_one_line_exit_2(
    tmp_path: Path,
    nothing_listening: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    dry_run: bool,
) -> None:
    """Not "0 rows", exit 0: an export that came out empty is a mistake to say."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "orders.csv"
    path.write_bytes(content)
    assert main(replay("--file", path, *(["--dry-run"] if dry_run else []))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: header: none: the file is empty (a CSV's first line names its columns)\n"
