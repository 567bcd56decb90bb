"""The model contract: each mismatch names the topology key, its value and the model's."""

from __future__ import annotations

from typing import NoReturn

import grpc
import pytest
from tritonclient.grpc import service_pb2

from pipeline.triton.codec import ModelSignature
from pipeline.triton.contract import (
    BatchBound,
    ModelContractError,
    ServedModel,
    Tensor,
    contract_problems,
    fetch_served_model,
)


def served(history: int = 16, top_k: int = 10, max_batch: int = 256, **changes: Tensor) -> ServedModel:
    inputs = {"USER_ID": Tensor("INT64", (-1, 1)), "HISTORY": Tensor("INT64", (-1, history))}
    outputs = {"ITEM_IDS": Tensor("INT64", (-1, top_k)), "SCORES": Tensor("FP32", (-1, top_k))}
    for name, tensor in changes.items():
        (inputs if name in inputs else outputs)[name] = tensor
    return ServedModel("recommender", inputs, outputs, max_batch)


SIG = ModelSignature("recommender", "", history_length=16, top_k=10)
BOUND = BatchBound("batch.max_size", 128)


def test_a_fitting_model_has_no_problems() -> None:
    assert contract_problems(served(), SIG, BOUND) == []
    assert contract_problems(served(history=-1, top_k=-1), SIG, BOUND) == []  # variable sizes fit
    assert contract_problems(served(top_k=20), SIG, BOUND) == []  # more items than asked for


def test_a_wrong_history_length_names_the_key_and_both_values() -> None:
    [problem] = contract_problems(served(history=8), SIG, BOUND)
    assert problem == "window.history_length: 16, but model 'recommender' takes HISTORY of 8 items"


def test_top_k_above_what_the_model_returns() -> None:
    [problem] = contract_problems(served(top_k=5), SIG, BOUND)
    assert problem.startswith("model.top_k: 10, but model 'recommender' returns 5 items")


def test_batches_above_max_batch_size_name_the_key_that_sets_them() -> None:
    [problem] = contract_problems(served(max_batch=64), SIG, BatchBound("adaptive.max_batch", 256))
    assert problem.startswith("adaptive.max_batch: 256 rows per request, above model 'recommender'")
    assert "max_batch_size 64" in problem
    assert "no batching" in contract_problems(served(max_batch=0), SIG, BOUND)[0]


def test_missing_or_mistyped_tensors() -> None:
    model = served(SCORES=Tensor("FP64", (-1, 10)))
    del model.inputs["USER_ID"]  # type: ignore[attr-defined]
    problems = contract_problems(model, SIG, BOUND)
    assert any("has no input USER_ID" in p for p in problems)
    assert any("SCORES is FP64" in p for p in problems)


def test_the_unknown_items_output_is_optional_but_must_be_int32() -> None:
    assert contract_problems(served(UNKNOWN_ITEMS=Tensor("INT32", (-1, 1))), SIG, BOUND) == []
    [problem] = contract_problems(served(UNKNOWN_ITEMS=Tensor("INT64", (-1, 1))), SIG, BOUND)
    assert "UNKNOWN_ITEMS is INT64" in problem


class _Stub:
    """Answers ModelMetadata with NOT_FOUND; ServerReady as told."""

    def __init__(self, server_ready: bool) -> None:
        self.server_ready = server_ready

    async def ModelMetadata(self, request: object, timeout: float, metadata: object = None) -> NoReturn:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "unknown model"
        )

    async def ServerReady(self, request: object, timeout: float, metadata: object = None) -> object:
        return service_pb2.ServerReadyResponse(ready=self.server_ready)


async def test_a_model_missing_from_a_starting_server_is_waited_for() -> None:
    with pytest.raises(grpc.aio.AioRpcError):  # the caller's wait-and-retry path
        await fetch_served_model(_Stub(server_ready=False), "recommender", "")  # type: ignore[arg-type]


async def test_a_model_missing_from_a_ready_server_is_a_contract_error() -> None:
    with pytest.raises(ModelContractError, match=r"model\.name: 'recommender'"):
        await fetch_served_model(_Stub(server_ready=True), "recommender", "")  # type: ignore[arg-type]


def test_parameters_the_queue_ignores_are_not_sent() -> None:
    """priority only with priority levels, timeout only where a queue policy lets a request
    override it (Triton ignores them otherwise, yet pays for them per row)."""
    from tritonclient.grpc import model_config_pb2

    from pipeline.triton.contract import ReadParameters, read_parameters

    plain = model_config_pb2.ModelConfig()
    plain.dynamic_batching.max_queue_delay_microseconds = 500
    assert read_parameters(plain) == ReadParameters(priority=False, timeout=False)
    levels = model_config_pb2.ModelConfig()
    levels.dynamic_batching.priority_levels = 3
    levels.dynamic_batching.default_queue_policy.allow_timeout_override = True
    assert read_parameters(levels) == ReadParameters(priority=True, timeout=True)
    per_level = model_config_pb2.ModelConfig()
    per_level.dynamic_batching.priority_levels = 2
    per_level.dynamic_batching.priority_queue_policy[1].allow_timeout_override = True
    assert read_parameters(per_level) == ReadParameters(priority=True, timeout=True)
    assert read_parameters(model_config_pb2.ModelConfig()) == ReadParameters()  # another scheduler
