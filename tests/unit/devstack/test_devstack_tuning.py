"""The embedded broker's tuning, its load watch, and the books kept across broker epochs."""

from __future__ import annotations

import os
import time

import orjson

from pipeline.audit import Ledger, combined_summary
from pipeline.devstack.broker_load import BrokerLoad, process_cpu_seconds
from pipeline.devstack.tuning import BrokerTuning
from pipeline.topology.loader import load_topology


def test_tuning_sets_the_consumer_and_the_producers_and_nothing_else(repo_root) -> None:
    shipped = load_topology(repo_root / "topologies" / "recommendations.yaml")
    tuned = BrokerTuning(linger_ms=123, fetch_max_wait_ms=7, max_poll_records=9).apply(shipped)
    assert tuned.sink.linger_ms == 123
    assert tuned.source.fetch_max_wait_ms == 7
    assert shipped.source.offer_round_robin and not tuned.source.offer_round_robin
    rest = {"source": {"fetch_max_wait_ms", "offer_round_robin"}, "sink": {"linger_ms"}}
    assert tuned.model_dump(exclude=rest) == shipped.model_dump(exclude=rest)
    assert shipped.sink.linger_ms != 123  # the file's own topology is untouched


def test_process_cpu_seconds_reads_this_process() -> None:
    """/proc counts CPU time in clock ticks (10 ms): busy work of a few ticks must show,
    however the shared cores are loaded (a fixed amount of work once did not)."""
    before = process_cpu_seconds(os.getpid())
    deadline = time.monotonic() + 5
    while process_cpu_seconds(os.getpid()) < before + 0.05 and time.monotonic() < deadline:
        sum(i * i for i in range(100_000))
    assert process_cpu_seconds(os.getpid()) >= before + 0.05


def test_recycle_is_due_once_the_share_grew_from_its_lowest() -> None:
    load = BrokerLoad(pid=os.getpid())
    load.history = [(30.0, 0.10), (60.0, 0.08), (90.0, 0.20)]
    assert load.baseline == 0.08
    assert not load.needs_recycle(0.30, growth=0.25)
    assert load.needs_recycle(0.33, growth=0.25)
    assert "8%" in load.recycle_message(0.33) and "33%" in load.recycle_message(0.33)


def test_a_vanished_broker_gives_no_sample() -> None:
    load = BrokerLoad(pid=2**22 + 12345)  # above pid_max: no such process
    assert load.sample(1.0) is None and load.sample(2.0) is None


def _recommendation(offsets: list[int], topic: str = "in") -> bytes:
    return orjson.dumps({"sources": [{"topic": topic, "partition": 0, "offset": o} for o in offsets]})


def test_latencies_wait_for_their_input_and_unanswered_counts_old_inputs() -> None:
    ledger = Ledger()
    ledger.add_recommendation(_recommendation([0]), timestamp_ms=1_050)
    assert ledger.take_latencies() == []  # its input's acknowledgement is not in yet
    ledger.add_input(("in", 0, 0), 1_000)
    ledger.add_input(("in", 0, 1), 1_010)
    ledger.add_input(("in", 0, 2), 5_000)
    assert ledger.take_latencies() == [50.0]
    assert ledger.take_latencies() == []
    assert ledger.unanswered(older_than_ms=2_000) == 1  # offset 1; offset 2 is too recent
    assert ledger.latencies_ms == [50.0]


def test_epochs_are_summed_without_their_offsets_meeting() -> None:
    first, second = Ledger(), Ledger()
    for ledger, base in ((first, 0), (second, 10_000)):
        ledger.add_input(("in", 0, 0), base)
        ledger.add_input(("in", 0, 1), base)
        ledger.add_recommendation(_recommendation([0, 1]), timestamp_ms=base + 20)
    second.add_input(("in", 0, 2), 10_000)  # the same coordinates as nothing in the first epoch
    summary = combined_summary([first, second])
    assert summary["events_in"] == 5
    assert summary["lost"] == 1
    assert summary["duplicates"] == 0
    assert summary["recommendations"] == 2
