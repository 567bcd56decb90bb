"""The memory formula: each term moves with the topology key that sets it, and the shipped
topologies get sensible numbers (below the 1.25 GiB a count × max_event_bytes reading gave)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.sizing import (
    BASELINE_BYTES,
    CHANGELOG_RECORD_MIN_BYTES,
    EVENT_OVERHEAD_BYTES,
    FETCH_PARTITION_BYTES,
    MIB,
    RESTORE_RECORD_BYTES,
    MemoryBudget,
    format_budget,
    memory_budget,
)
from pipeline.testing import topology
from pipeline.topology.loader import load_topology

ROOT = Path(__file__).resolve().parents[2]
SASL_ENV = {"KAFKA_SASL_USERNAME": "user", "KAFKA_SASL_PASSWORD": "secret"}
ARMS = [{"id": "a", "version": "1", "share": 1.0}, {"id": "b", "version": "2", "shadow": True}]


def term_bytes(name: str, partitions: int = 4, **sections: Any) -> int:
    return memory_budget(topology(**sections), partitions).term(name).bytes


def moves(name: str, low: dict[str, Any], high: dict[str, Any]) -> tuple[int, int]:
    return term_bytes(name, **low), term_bytes(name, **high)


def test_the_in_flight_payload_follows_the_bytes_bound_not_count_times_max_event_bytes() -> None:
    small, large = moves(
        "in-flight payload",
        {"source": {"credits": {"high_watermark_bytes": 8 * MIB, "low_watermark_bytes": MIB}}},
        {"source": {"credits": {"high_watermark_bytes": 32 * MIB, "low_watermark_bytes": MIB}}},
    )
    assert large - small == 24 * MIB
    # 20,000 credits × 64 KiB would be 1.25 GiB: the default 64 MiB bound plus a poll rules
    assert term_bytes("in-flight payload") < 80 * MIB


def test_neither_the_count_nor_max_event_bytes_bounds_the_payload() -> None:
    """An event above max_event_bytes is fetched and counted at its real size before parse
    dead-letters it: 100 credits of 1 MB events reach the bytes bound, not 100 × 64 KiB."""
    few = {"credits": {"high_watermark": 100, "low_watermark": 50}}
    poll = 4 * FETCH_PARTITION_BYTES  # four partitions' fetch
    bound = 64 * MIB  # the default high_watermark_bytes
    assert term_bytes("in-flight payload", source=few) == bound + poll
    assert term_bytes("in-flight payload", source={**few, "max_event_bytes": 1_000}) == bound + poll
    # the dead letters copy the same payload again
    assert term_bytes("outputs awaiting the broker", source=few) > bound + poll


def test_each_input_topic_has_its_own_bounds() -> None:
    one, two = moves("in-flight payload", {}, {"source": {"topics": ["a", "b"]}})
    assert two == 2 * one
    one, two = moves("in-flight event objects", {}, {"source": {"topics": ["a", "b"]}})
    assert two == 2 * one


def test_one_poll_beyond_the_bound_follows_max_poll_records_and_the_fetch() -> None:
    # a record as large as one partition's fetch each, at most the fetch buffer (4 partitions)
    few, many = moves("in-flight payload", {"source": {"max_poll_records": 2}}, {"source": {}})
    assert many - few == 4 * FETCH_PARTITION_BYTES - 2 * FETCH_PARTITION_BYTES
    t = topology()
    assert (
        memory_budget(t, 8).term("in-flight payload").bytes
        > memory_budget(t, 4).term("in-flight payload").bytes
    )


def test_event_objects_follow_the_credit_count() -> None:
    low, high = moves(
        "in-flight event objects",
        {"source": {"credits": {"high_watermark": 1_000, "low_watermark": 10}}},
        {"source": {"credits": {"high_watermark": 2_000, "low_watermark": 10}}},
    )
    assert high - low == 1_000 * EVENT_OVERHEAD_BYTES


def test_the_fetch_buffer_follows_the_partitions_held() -> None:
    t = topology()
    assert memory_budget(t, 12).term("consumer fetch buffer").bytes == 12 * FETCH_PARTITION_BYTES
    assert memory_budget(t, 1).term("consumer fetch buffer").bytes == FETCH_PARTITION_BYTES


def test_outputs_hold_the_payload_and_follow_top_k() -> None:
    payload = term_bytes("in-flight payload")
    ten, fifty = moves("outputs awaiting the broker", {"model": {"top_k": 10}}, {"model": {"top_k": 50}})
    assert payload < ten < fifty


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ({"model": {"max_in_flight": 8}, "adaptive": {"max_in_flight": 8}}, {"model": {"max_in_flight": 32}}),
        ({"batch": {"max_size": 64}}, {"batch": {"max_size": 128}}),
        ({"window": {"history_length": 8}}, {"window": {"history_length": 32}}),
        ({}, {"adaptive": {"enabled": True, "max_batch": 512}}),
    ],
)
def test_triton_requests_follow_in_flight_batch_size_and_history(
    low: dict[str, Any], high: dict[str, Any]
) -> None:
    small, large = moves("Triton requests in flight", low, high)
    assert 0 < small < large


def test_shadow_arms_count_only_when_there_are_some() -> None:
    assert "shadow arms' requests" not in {t.name for t in memory_budget(topology()).terms}
    model = {"version": ""}
    one, four = moves(
        "shadow arms' requests",
        {"model": model, "experiment": {"id": "e", "arms": ARMS}},
        {"model": model, "experiment": {"id": "e", "arms": [ARMS[0], {**ARMS[1], "max_in_flight": 8}]}},
    )
    assert four == 4 * one > 0


def test_in_memory_histories_follow_the_cache_or_the_users_whichever_is_less() -> None:
    cache = {"history_cache_mb": 8.0}
    assert term_bytes("users' histories (in memory)", window=cache) == 8 * MIB
    few = term_bytes("users' histories (in memory)", window={"remembered_users": 1_000})
    assert 0 < few < MIB  # 1,000 users of 16 items: ~456 kB
    assert term_bytes("users' histories (in memory)", window={"remembered_users": 0}) == 0


def test_durable_state_adds_rocksdb_per_partition_held(tmp_path: Path) -> None:
    t = topology(state={"dir": str(tmp_path)}, window={"history_cache_mb": 16.0})
    four, twelve = memory_budget(t, 4), memory_budget(t, 12)
    assert four.term("users' histories (cache)").bytes == 16 * MIB
    rocksdb = "RocksDB write buffers and block cache"
    assert twelve.term(rocksdb).bytes == 3 * four.term(rocksdb).bytes > 0
    assert "users' histories (in memory)" not in {term.name for term in four.terms}


def test_restores_read_every_partition_held_at_once(tmp_path: Path) -> None:
    """A fresh disk restores each partition held with a consumer of its own: its fetch and
    that fetch's records decoded (the smallest record: the most of them)."""
    t = topology(state={"dir": str(tmp_path)})
    four, twelve = memory_budget(t, 4), memory_budget(t, 12)
    restores = "state restores' readers"
    decoded = FETCH_PARTITION_BYTES // CHANGELOG_RECORD_MIN_BYTES * RESTORE_RECORD_BYTES
    assert four.term(restores).bytes == 4 * (FETCH_PARTITION_BYTES + decoded)
    assert twelve.term(restores).bytes == 3 * four.term(restores).bytes
    assert not four.term(restores).steady  # only while restoring: in the limit, not the request
    assert restores not in {term.name for term in memory_budget(topology(), 4).terms}


def test_the_outcome_join_follows_its_memory_and_is_gone_when_off() -> None:
    assert term_bytes("outcome join", outcomes={"memory_mb": 8.0}) == 8 * MIB
    off = memory_budget(topology(outcomes={"enabled": False}))
    assert "outcome join" not in {term.name for term in off.terms}


def test_the_limit_is_above_the_bound_and_the_request_above_the_baseline() -> None:
    budget = memory_budget(topology())
    assert budget.limit >= 1.25 * budget.total
    assert BASELINE_BYTES < budget.request < budget.total
    more = memory_budget(topology(source={"credits": {"high_watermark_bytes": 512 * MIB}}))
    assert more.limit > budget.limit and more.request == budget.request


def shipped() -> tuple[MemoryBudget, MemoryBudget]:
    """The local topology (histories in memory) and the Kubernetes one (durable state), for
    a member holding all 12 input partitions."""
    return (
        memory_budget(load_topology(ROOT / "topologies" / "recommendations.yaml")),
        memory_budget(load_topology(ROOT / "deploy" / "k8s" / "recommendations.yaml", env=SASL_ENV)),
    )


def test_the_shipped_topologies_get_sensible_numbers() -> None:
    local, deployed = shipped()
    for budget in (local, deployed):
        # 64 MiB a topic and one poll, not 20,000 credits × 64 KiB = 1.25 GiB
        assert budget.term("in-flight payload").bytes < 100 * MIB
    assert 256 * MIB <= local.limit <= 768 * MIB, local.limit / MIB
    assert 128 * MIB <= local.request <= 256 * MIB, local.request / MIB  # measured 80–150 MB
    # durable state: RocksDB's memtables and block cache for each of 12 open stores rule
    rocksdb = deployed.term("RocksDB write buffers and block cache").bytes
    assert rocksdb == 12 * 64 * MIB
    assert local.limit + rocksdb <= deployed.limit <= 2 * 1024 * MIB, deployed.limit / MIB


def test_the_table_names_every_term_its_key_and_the_request_and_limit() -> None:
    budget = shipped()[0]
    table = format_budget(budget)
    for term in budget.terms:
        assert term.name in table and term.key in table
    assert f"memory: {budget.limit // MIB}Mi" in table
    assert f"memory: {budget.request // MIB}Mi" in table


def test_a_member_holds_at_least_one_partition() -> None:
    with pytest.raises(ValueError):
        memory_budget(topology(), 0)
