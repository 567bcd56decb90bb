"""The stream pool's keepalive against Triton's default ping policy: a stream left idle
for 45 s still answers. With the former 10 s keepalive Triton answered GOAWAY
"too_many_pings" within that time and the next request failed with UNAVAILABLE."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.events import Event, RawRecord, UserRequest
from pipeline.triton import codec
from pipeline.triton.streams import StreamPool

pytestmark = pytest.mark.integration
IDLE_S = 45


def test_an_idle_stream_is_not_closed_for_pinging(stack) -> None:
    async def scenario() -> tuple[int, int]:
        pool = StreamPool(stack.triton.grpc_url, streams=1)  # the default keepalive
        sig = codec.ModelSignature("recommender", "", 16, 10)
        source = RawRecord("in", 0, 1, 0, None, b"{}", ())
        rows = [UserRequest(1, (2, 3), (Event("e", 1, 2, "view", 0, source),))]
        try:
            answers = 0
            for i in range(2):
                response = await asyncio.wait_for(
                    pool.pick().submit(codec.encode(rows, sig, f"idle-{i}")), 10
                )
                answers += len(codec.decode(response, 1, 10))
                if i == 0:
                    await asyncio.sleep(IDLE_S)
            return answers, pool.streams[0].opens
        finally:
            await pool.close()

    answers, opens = asyncio.run(scenario())
    assert answers == 2
    assert opens == 1  # the same stream, never broken and re-opened
