"""W3C trace context: a recommendation continues its input's trace as a span of its own."""

from __future__ import annotations

import re

import pytest

from pipeline.operators.enrich import continue_trace

INPUT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_trace_id_and_flags_are_kept_and_the_parent_id_is_new() -> None:
    out = continue_trace(INPUT)
    version, trace_id, parent_id, flags = out.split(b"-")
    assert (version, trace_id, flags) == (b"00", b"4bf92f3577b34da6a3ce929d0e0e4736", b"01")
    assert re.fullmatch(rb"[0-9a-f]{16}", parent_id) and parent_id != b"00f067aa0ba902b7"
    assert continue_trace(INPUT) != out  # a span id per recommendation


@pytest.mark.parametrize(
    "value",
    [
        b"00-trace-01",  # not a traceparent
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    ],
)
def test_an_invalid_value_is_carried_as_it_came(value: bytes) -> None:
    assert continue_trace(value) == value
