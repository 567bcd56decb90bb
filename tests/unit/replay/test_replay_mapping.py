"""The replay's column mapping and file reading: a user's export (its own column names,
ratings, epoch seconds or ISO times, gzip or not) becomes the pipeline's events, streamed."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from pipeline.errors import TopologyError
from pipeline.replay.files import EventFile, UnreadableFile, count_rows
from pipeline.replay.mapping import ColumnMapping, Mapper, load_mapping, to_epoch_ms

MOVIES = (Path(__file__).resolve().parents[3] / "topologies" / "mappings" / "ratings.yaml").read_text()


def write_mapping(tmp_path: Path, text: str = MOVIES) -> ColumnMapping:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    return load_mapping(path)


def test_ratings_become_event_types_and_seconds_become_ms(tmp_path: Path) -> None:
    mapper = Mapper(write_mapping(tmp_path), "ratings")
    rows = [
        {"userId": "1", "movieId": "193609", "rating": "5.0", "timestamp": "964982703"},
        {"userId": "1", "movieId": "3", "rating": "4.0", "timestamp": "964981247"},
        {"userId": "2", "movieId": "6", "rating": "0.5", "timestamp": "1445714885.5"},
    ]
    events = [mapper.event(row, n) for n, row in enumerate(rows)]
    assert [e["type"] for e in events if e] == ["purchase", "click", "view"]
    first = events[0]
    assert first is not None
    assert (first["user_id"], first["item_id"], first["ts"]) == (1, 193609, 964_982_703_000)
    assert events[2] is not None and events[2]["ts"] == 1_445_714_885_500


def test_derived_event_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    mapping = write_mapping(tmp_path)
    row = {"userId": "1", "movieId": "3", "rating": "4.0", "timestamp": "964981247"}
    once = Mapper(mapping, "ratings").event(row, 7)
    again = Mapper(mapping, "ratings").event(dict(row), 7)
    assert once is not None and again is not None
    assert once["event_id"] == again["event_id"]  # a re-sent row is a recognisable duplicate
    other_row = Mapper(mapping, "ratings").event(row, 8)
    assert other_row is not None and other_row["event_id"] != once["event_id"]  # same content, other row


def test_skip_value_map_and_unconvertible_values_passed_on(tmp_path: Path) -> None:
    mapping = write_mapping(
        tmp_path,
        "user: u\nitem: i\ntimestamp: {column: t, unit: iso}\n"
        "type: {column: action, values: {buy: purchase, look: view, refund: skip}}\n",
    )
    mapper = Mapper(mapping, "shop")
    assert mapper.event({"u": "1", "i": "2", "t": "2021-03-04T05:06:07Z", "action": "refund"}, 0) is None
    bought = mapper.event({"u": "1", "i": "2", "t": "2021-03-04T05:06:07", "action": "buy"}, 1)
    assert bought is not None and bought["type"] == "purchase" and bought["ts"] == 1_614_834_367_000
    odd = mapper.event({"u": "x1", "i": "2", "t": "yesterday", "action": "wishlist"}, 2)
    # Not judged here: the pipeline's parse rules give the reason (wrong_type, unknown_type).
    assert odd is not None and (odd["user_id"], odd["ts"], odd["type"]) == ("x1", "yesterday", "wishlist")


def test_constant_type_and_event_id_column(tmp_path: Path) -> None:
    mapping = write_mapping(
        tmp_path, "user: u\nitem: i\ntimestamp: {column: t}\ntype: {constant: view}\nevent_id: id\n"
    )
    event = Mapper(mapping, "x").event({"u": 1, "i": 2, "t": 1_700_000_000_000, "id": "abc"}, 0)
    assert event == {"event_id": "abc", "user_id": 1, "item_id": 2, "type": "view", "ts": 1_700_000_000_000}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("user: u\ntype: {constant: bought}\n", "type"),
        ("user: u\ntype: {column: a, constant: view}\n", "type"),
        ("user: u\ntimestamp: {column: t, unit: hours}\n", "timestamp.unit"),
        ("user: u\nitems: i\n", "items"),
    ],
)
def test_a_bad_mapping_names_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as err:
        load_mapping(path)
    assert str(path) in str(err.value) and where in str(err.value)


def test_epoch_conversions() -> None:
    assert to_epoch_ms("1.5", "s") == 1_500
    assert to_epoch_ms(1_700_000_000_123, "ms") == 1_700_000_000_123
    assert to_epoch_ms("2020-01-01T00:00:00+01:00", "iso") == 1_577_833_200_000
    assert to_epoch_ms("", "s") == ""


def test_gzip_csv_is_streamed_from_a_row_on(tmp_path: Path) -> None:
    path = tmp_path / "export.csv.gz"  # gzip told by content: the name's .gz is not needed
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{u * 1000},4.0,{964981247 + u}" for u in range(50)]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    events = EventFile(path, write_mapping(tmp_path))
    rows = list(events.rows(start=45))
    assert [r.number for r in rows] == list(range(45, 50))
    assert orjson.loads(rows[0].value or b"")["item_id"] == 45_000
    assert rows[0].key == b"45"
    assert count_rows(path, "csv") == 50


def test_jsonl_without_mapping_is_passed_on_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"user_id": 5, "item_id": 1}\n\nnot json\n{"user_id": 6}\n')
    rows = list(EventFile(path).rows())
    assert [(r.number, r.value, r.key) for r in rows] == [
        (0, b'{"user_id": 5, "item_id": 1}', b"5"),
        (1, b"not json", None),  # the pipeline dead-letters it (malformed_json)
        (2, b'{"user_id": 6}', b"6"),
    ]
    assert count_rows(path, "jsonl") == 3


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    csv_path = tmp_path / "excel.csv"  # spreadsheet exports start with one
    csv_path.write_bytes(b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n7,12,5.0,964982703\r\n\r\n")
    (row,) = EventFile(csv_path, write_mapping(tmp_path)).rows()
    assert orjson.loads(row.value or b"")["user_id"] == 7 and row.key == b"7"
    assert count_rows(csv_path, "csv") == 1  # the blank line is no row
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"user_id": 5}\n')
    assert [(r.value, r.key) for r in EventFile(jsonl).rows()] == [(b'{"user_id": 5}', b"5")]


def test_numbers_an_event_cannot_carry_are_passed_on_not_a_traceback(tmp_path: Path) -> None:
    mapper = Mapper(write_mapping(tmp_path), "ratings")
    row = {"userId": "1e30", "movieId": str(2**70), "rating": "nan", "timestamp": "inf"}
    event = mapper.event(row, 0)
    assert event is not None
    # as they were: the pipeline dead-letters them (wrong_type, unknown_type), and the row is sent
    assert (event["user_id"], event["item_id"], event["type"], event["ts"]) == (
        "1e30",
        str(2**70),
        "nan",
        "inf",
    )
    orjson.dumps(event)
    assert to_epoch_ms("nan", "ms") == "nan" and to_epoch_ms("1e300", "s") == "1e300"
    assert mapper.event({**row, "rating": "inf", "timestamp": "964982703"}, 1)["type"] == "inf"  # type: ignore[index]


def test_iso_times_to_the_millisecond() -> None:
    # epoch seconds as a float, times 1000, truncated: ...237 (about one time in 150 is 1 ms off)
    assert to_epoch_ms("1978-07-18T13:00:48.238Z", "iso") == 269_614_848_238
    assert to_epoch_ms("1978-07-18T14:00:48.238+01:00", "iso") == 269_614_848_238
    assert to_epoch_ms("1969-12-31T23:59:59.999", "iso") == -1


def test_a_truncated_gzip_file_stops_with_where_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{u},4.0,{964981247 + u}" for u in range(5_000)]
    whole = gzip.compress("\n".join(lines).encode())
    path.write_bytes(whole[: len(whole) // 2])  # a download that broke off
    assert count_rows(path, "csv") is None
    with pytest.raises(UnreadableFile, match=r"cut\.csv\.gz: after row"):
        list(EventFile(path, write_mapping(tmp_path)).rows())
    jsonl = tmp_path / "cut.jsonl"
    jsonl.write_bytes(gzip.compress(b'{"user_id": 1}\n' * 5_000)[:-30])
    with pytest.raises(UnreadableFile, match=r"cut\.jsonl"):
        list(EventFile(jsonl).rows())
