"""The stream pool's keepalive against Triton's default ping policy: a stream left idle
for at least 45 s still answers. With the former 10 s keepalive Triton answered GOAWAY
"too_many_pings" within that time and the next request failed with UNAVAILABLE.

The stream is opened and asked once when the session's stack starts (tests/idle_stream.py);
this test asks it again once it has been idle 45 s, so the wait overlaps the suite."""

from __future__ import annotations

import pytest

from tests.idle_stream import STREAMS

pytestmark = pytest.mark.integration
IDLE_S = 45


def test_an_idle_stream_is_not_closed_for_pinging(stack) -> None:
    answers, idle_s, opens = STREAMS[id(stack)].ask_again_after(IDLE_S)
    assert answers == 2
    assert idle_s >= IDLE_S
    assert opens == 1  # the same stream, never broken and re-opened
