"""`pipeline state build` reads ids as the pipeline does: a string user's history is keyed by
its internal id and goes to the partition of its key, the id's text (what the replay sends)."""

from __future__ import annotations

from pathlib import Path

from pipeline import ids
from pipeline.replay.files import EventFile
from pipeline.replay.mapping import load_mapping
from pipeline.state.build import _events


def test_string_and_integer_ids_are_read_as_parse_reads_them(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(
        "customer,sku,ts,kind\ncust-18, SKU-00018 ,1000,view\n18,0018,1001,view\n,SKU-1,1002,view\n"
    )
    (tmp_path / "map.yaml").write_text(
        "user: customer\nitem: sku\ntimestamp: {column: ts, unit: ms}\ntype: {column: kind}\nevent_id: null\n"
    )
    file = EventFile(tmp_path / "orders.csv", load_mapping(tmp_path / "map.yaml"))
    assert list(_events(file)) == [
        (b"cust-18", ids.internal_id("cust-18"), ids.internal_id("SKU-00018"), 1000),
        (b"18", 18, ids.internal_id("0018"), 1001),
        None,  # no user: not an event
    ]
