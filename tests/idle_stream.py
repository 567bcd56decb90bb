"""A Triton stream opened when the session's stack starts and left idle until the keepalive
test asks it again (tests/integration/test_stream_keepalive.py): the idle time overlaps the
rest of the suite instead of being waited for. Its own thread and event loop, so it lives
across the tests' loops."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

from pipeline.testing.builders import event, user_request
from pipeline.triton import codec
from pipeline.triton.streams import StreamPool

SIGNATURE = codec.ModelSignature("recommender", "", 16, 10)
ANSWER_WAIT_S = 10.0


class IdleStream:
    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="idle-stream", daemon=True)
        self.pool: StreamPool | None = None
        self.first: Future[int] | None = None
        self.answered_at = 0.0

    def start(self) -> None:
        """The stream opened and asked once (in the background: the start does not wait)."""
        self.thread.start()
        self.first = asyncio.run_coroutine_threadsafe(self._open_and_ask(), self.loop)

    async def _open_and_ask(self) -> int:
        self.pool = StreamPool(self.url, 1, 100_000)  # the default keepalive
        answers = await self._ask("idle-0")
        self.answered_at = time.monotonic()
        return answers

    async def _ask(self, req_id: str) -> int:
        assert self.pool is not None
        rows = [user_request(event(), history=(2, 3))]
        response = await asyncio.wait_for(self.pool.pick().submit(codec.encode(rows, SIGNATURE, req_id)), 10)
        return len(codec.decode(response, 1, 10))

    def ask_again_after(self, idle_s: float) -> tuple[int, float, int]:
        """Once the stream has been idle ``idle_s`` (waiting for what is left of it): the
        second answer, the idle time, and how many times the stream was opened."""
        assert self.first is not None
        first = self.first.result(ANSWER_WAIT_S)
        time.sleep(max(0.0, self.answered_at + idle_s - time.monotonic()))
        idle = time.monotonic() - self.answered_at
        second = asyncio.run_coroutine_threadsafe(self._ask("idle-1"), self.loop).result(ANSWER_WAIT_S)
        assert self.pool is not None
        return first + second, idle, self.pool.streams[0].opens

    def close(self) -> None:
        if self.pool is not None:
            asyncio.run_coroutine_threadsafe(self.pool.close(), self.loop).result(ANSWER_WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(ANSWER_WAIT_S)


STREAMS: dict[int, IdleStream] = {}  # id(stack) → its idle stream
