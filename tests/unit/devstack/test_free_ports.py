"""The dev stack's port picks: runs of free ports, below the ephemeral range, never twice."""

from __future__ import annotations

import socket

import pytest

from pipeline.devstack import process
from pipeline.devstack.process import free_port, free_ports


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    picks = [free_port() for _ in range(300)]
    assert len(set(picks)) == len(picks)
    assert all(20_000 <= port < process._ephemeral_low() for port in picks)


def test_a_run_of_ports_is_consecutive_bindable_and_apart_from_other_runs() -> None:
    firsts = [free_ports(3) for _ in range(50)]
    claimed = [first + i for first in firsts for i in range(3)]
    assert len(set(claimed)) == len(claimed)
    for port in claimed[:9]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = free_port()
    process._handed_out.discard(taken)  # only the bind can refuse it now
    real, picks = process.random.randrange, []

    def pick(low: int, high: int) -> int:
        picks.append(low)
        return taken if len(picks) == 1 else real(low, high)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", taken))
        monkeypatch.setattr(process.random, "randrange", pick)
        assert free_port() != taken
    assert len(picks) >= 2
