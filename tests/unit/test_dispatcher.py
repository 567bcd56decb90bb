"""The dispatcher against a fake stream pool (the real one is covered on the real Triton):
what it does with failures that no Triton answer can produce."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NoReturn

from pipeline.events import Event, InferenceBatch, RawRecord, UserRequest
from pipeline.metrics import Metrics
from pipeline.triton.codec import ModelSignature
from pipeline.triton.dispatcher import DispatchConfig, Dispatcher


class RaisingStream:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.ids: list[str] = []

    def submit(self, request: Any) -> NoReturn:
        self.ids.append(request.id)
        raise self.error

    def forget(self, req_id: str) -> None:
        pass


class FakePool:
    def __init__(self, stream: RaisingStream) -> None:
        self.stream = stream

    def pick(self) -> RaisingStream:
        return self.stream


def batch_of(users: int) -> InferenceBatch:
    now = time.time_ns() // 1_000_000
    rows = []
    for u in range(users):
        raw = RawRecord("in", 0, u, now, None, b"{}", ())
        rows.append(UserRequest(u, (1, 2), (Event(f"e{u}", u, 2, "view", now, raw),)))
    return InferenceBatch(tuple(rows), now, now)


def dispatcher(stream: RaisingStream) -> Dispatcher:
    config = DispatchConfig(ModelSignature("recommender", "", 16, 10))
    return Dispatcher(FakePool(stream), config, Metrics())  # type: ignore[arg-type]


def test_an_unexpected_exception_fails_the_batch_not_the_caller() -> None:
    stream = RaisingStream(ValueError("a bug in the client"))
    outcome = asyncio.run(dispatcher(stream).infer(batch_of(3)))
    assert outcome.answers == []
    assert [d.reason for d in outcome.failures] == ["internal_error"] * 3
    assert {d.record.offset for d in outcome.failures} == {0, 1, 2}
    assert "a bug in the client" in outcome.failures[0].detail


def test_request_ids_differ_for_the_same_records_sent_twice() -> None:
    stream = RaisingStream(ValueError("x"))
    d = dispatcher(stream)
    batch = batch_of(2)
    asyncio.run(d.infer(batch))
    asyncio.run(d.infer(batch))
    assert len(stream.ids) == 2 and stream.ids[0] != stream.ids[1]
