"""The dispatcher against a fake stream pool (the real one is covered on the real Triton):
what it does with failures that no Triton answer can produce."""

from __future__ import annotations

from typing import Any, NoReturn

from pipeline import wiring
from pipeline.events import InferenceBatch
from pipeline.metrics import Metrics
from pipeline.testing import topology
from pipeline.testing.builders import event, inference_batch, now_ms, user_request
from pipeline.triton.dispatcher import Dispatcher


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
    """Users 0..``users``-1, one event each, at offsets 0..``users``-1, all just now."""
    now = now_ms()
    rows = [user_request(event(u, user=u, ts=now), history=(1, 2)) for u in range(users)]
    return inference_batch(*rows, window_start_ms=now, window_end_ms=now)


def dispatcher(stream: RaisingStream) -> Dispatcher:
    t = topology()  # the shipped settings
    parts = wiring.dispatch_config(t), Metrics(), wiring.circuit_breaker(t), wiring.retry_budget(t)
    return Dispatcher(FakePool(stream), *parts)  # type: ignore[arg-type]


async def test_an_unexpected_exception_fails_the_batch_not_the_caller() -> None:
    stream = RaisingStream(ValueError("a bug in the client"))
    outcome = await dispatcher(stream).infer(batch_of(3))
    assert outcome.answers == []
    assert [d.reason for d in outcome.failures] == ["internal_error"] * 3
    assert {d.record.offset for d in outcome.failures} == {0, 1, 2}
    assert "a bug in the client" in outcome.failures[0].detail


async def test_request_ids_differ_for_the_same_records_sent_twice() -> None:
    stream = RaisingStream(ValueError("x"))
    d = dispatcher(stream)
    batch = batch_of(2)
    await d.infer(batch)
    await d.infer(batch)
    assert len(stream.ids) == 2 and stream.ids[0] != stream.ids[1]
