"""The stream pool's keepalive against Triton's default ping policy: a stream left idle
for 45 s still answers. With the former 10 s keepalive Triton answered GOAWAY
"too_many_pings" within that time and the next request failed with UNAVAILABLE."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.testing.builders import event, user_request
from pipeline.triton import codec
from pipeline.triton.streams import StreamPool

pytestmark = pytest.mark.integration
IDLE_S = 45


async def test_an_idle_stream_is_not_closed_for_pinging(stack) -> None:
    pool = StreamPool(stack.triton.grpc_url, 1, 100_000)  # the default keepalive
    sig = codec.ModelSignature("recommender", "", 16, 10)
    rows = [user_request(event(), history=(2, 3))]
    try:
        answers = 0
        for i in range(2):
            response = await asyncio.wait_for(pool.pick().submit(codec.encode(rows, sig, f"idle-{i}")), 10)
            answers += len(codec.decode(response, 1, 10))
            if i == 0:
                await asyncio.sleep(IDLE_S)
        opens = pool.streams[0].opens
    finally:
        await pool.close()
    assert answers == 2
    assert opens == 1  # the same stream, never broken and re-opened
