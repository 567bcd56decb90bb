"""The model contract, checked at start: a topology that does not fit the served model (a
wrong ``history_length``, a ``top_k`` above what the model returns, batches above its
``max_batch_size``, a model name the server does not have) stops the process with one
message naming the topology key and the model's value. Found later, the same mismatch
would dead-letter every event, or bisect every batch down to single rows first."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from pipeline.errors import Fatal
from pipeline.triton.codec import ModelSignature

Metadata = tuple[tuple[str, str], ...]  # extra request headers (a gateway's token)

INPUTS = {"USER_ID": "INT64", "HISTORY": "INT64"}
OUTPUTS = {"ITEM_IDS": "INT64", "SCORES": "FP32"}
UNKNOWN_ITEMS = "UNKNOWN_ITEMS"  # optional output: history items the model did not know, per row
ITEM_KEYS = "ITEM_KEYS"  # optional output: each row's items in the catalogue's own ids (JSON)
OPTIONAL_OUTPUTS = {UNKNOWN_ITEMS: "INT32", ITEM_KEYS: "BYTES"}
# Not there yet (starting, restarting, overloaded): the caller waits. Anything else the
# server answers (unauthenticated, unimplemented...) will not change by waiting.
WAIT_FOR = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
# ServerReady's answer when the server cannot say yet (starting, or too busy to answer in
# time). Any other error (a gateway that does not route it, no permission) means it cannot
# be asked at all: waiting would not change that.
NOT_READY_YET = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class ModelContractError(Fatal):
    """The topology and the served model disagree: a configuration error (exit 2)."""

    exit_code = 2
    reason = "model_contract"


class ModelUnconfirmed(Fatal):
    """The server says it has no such model, but whether it is still loading its models
    cannot be told right now: ServerReady fails in a way that passes (a gateway's UNKNOWN or
    INTERNAL, its backend not registered yet). Asked again (model_check); if it lasts, exit 1
    — restarted with a backoff, not taken for a misconfiguration (exit 2), which it may not be."""

    exit_code = 1
    reason = "model_unconfirmed"


@dataclass(frozen=True)
class Tensor:
    datatype: str
    shape: tuple[int, ...]  # -1: any size


@dataclass(frozen=True)
class ReadParameters:
    """Which per-request parameters the model's scheduler reads. Triton ignores the others
    but still pays for them per row (docs/design.md), so only these are sent."""

    priority: bool = True
    timeout: bool = True
    unknown_items: bool = False  # the model answers UNKNOWN_ITEMS: asked for and counted
    item_keys: bool = False  # the model may answer ITEM_KEYS (string ids): asked for, given out


@dataclass(frozen=True)
class ServedModel:
    name: str
    inputs: Mapping[str, Tensor]
    outputs: Mapping[str, Tensor]
    max_batch_size: int  # 0: the model does not batch
    reads: ReadParameters = ReadParameters()


def read_parameters(config: model_config_pb2.ModelConfig) -> ReadParameters:
    """Priority is read only with priority levels; a timeout only where a queue policy lets a
    request override it. Another scheduler (no dynamic batching): sent, as it may read them."""
    if not config.HasField("dynamic_batching"):
        return ReadParameters()
    batching = config.dynamic_batching
    policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
    return ReadParameters(
        priority=batching.priority_levels > 0,
        timeout=any(policy.allow_timeout_override for policy in policies),
    )


@dataclass(frozen=True)
class BatchBound:
    key: str  # the topology key that sets it, for the message
    rows: int


def contract_problems(model: ServedModel, sig: ModelSignature, largest: BatchBound) -> list[str]:
    """Each problem as ``topology.key: value, but the model ...``; empty when they fit."""
    problems = []
    for name, dtype in {**INPUTS, **OUTPUTS}.items():
        tensor = model.inputs.get(name) or model.outputs.get(name)
        if tensor is None:
            kind = "input" if name in INPUTS else "output"
            problems.append(f"model.name: {model.name!r} has no {kind} {name} (it has {_names(model)})")
        elif tensor.datatype != dtype:
            problems.append(
                f"model.name: {model.name!r} {name} is {tensor.datatype}, the pipeline sends/reads {dtype}"
            )
    for name, dtype in OPTIONAL_OUTPUTS.items():
        optional = model.outputs.get(name)
        if optional is not None and optional.datatype != dtype:
            problems.append(
                f"model.name: {model.name!r} {name} is {optional.datatype}, the pipeline reads {dtype}"
            )
    history = model.inputs.get("HISTORY")
    if history is not None and history.shape and history.shape[-1] not in (-1, sig.history_length):
        problems.append(
            f"window.history_length: {sig.history_length}, but model {model.name!r} takes "
            f"HISTORY of {history.shape[-1]} items"
        )
    ids = model.outputs.get("ITEM_IDS")
    if ids is not None and ids.shape and ids.shape[-1] != -1 and ids.shape[-1] < sig.top_k:
        problems.append(f"model.top_k: {sig.top_k}, but model {model.name!r} returns {ids.shape[-1]} items")
    if model.max_batch_size == 0:
        problems.append(
            f"model.name: {model.name!r} has max_batch_size 0 (no batching); the pipeline sends batches"
        )
    elif largest.rows > model.max_batch_size:
        problems.append(
            f"{largest.key}: {largest.rows} rows per request, above model {model.name!r}'s "
            f"max_batch_size {model.max_batch_size}"
        )
    return problems


def _names(model: ServedModel) -> str:
    return ", ".join(sorted([*model.inputs, *model.outputs])) or "none"


async def _server_ready(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, timeout_s: float, metadata: Metadata
) -> bool:
    """Triton is not ready until every model it was started with has loaded. False too
    while it cannot answer yet (NOT_READY_YET); any other error is raised: the question
    cannot be asked (a gateway that does not route ServerReady, no permission)."""
    request = service_pb2.ServerReadyRequest()
    try:
        return bool((await stub.ServerReady(request, timeout=timeout_s, metadata=metadata or None)).ready)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in NOT_READY_YET:
            return False
        raise


async def fetch_served_model(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    name: str,
    version: str,
    timeout_s: float = 5.0,
    metadata: Metadata = (),
) -> ServedModel:
    """The model's metadata and config from the server. A model a ready server does not have
    is a ModelContractError; an unreachable or still starting server raises grpc's own error
    (the caller waits); a model missing from a server whose readiness fails in passing (a
    WAIT_FOR code) is ModelUnconfirmed (the caller asks again, within a bound)."""
    try:
        meta = await stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=name, version=version),
            timeout=timeout_s,
            metadata=metadata or None,
        )
        config = await stub.ModelConfig(
            service_pb2.ModelConfigRequest(name=name, version=version),
            timeout=timeout_s,
            metadata=metadata or None,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in WAIT_FOR:
            raise
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            try:
                loading = not await _server_ready(stub, timeout_s, metadata)
            except grpc.aio.AioRpcError as asked:
                if asked.code() in WAIT_FOR:  # cannot be told now, perhaps in a moment
                    raise ModelUnconfirmed(
                        f"model.name: {name!r} (version {version or 'latest'}): {exc.details()}; "
                        f"ServerReady answered {asked.code().name} ({asked.details()}), so whether "
                        f"the server is still loading its models cannot be told"
                    ) from None
                # It cannot be asked at all (not routed, no permission): waiting could last
                # forever for a misspelt name, so the model is taken as missing (exit 2).
                raise ModelContractError(
                    f"model.name: {name!r} (version {version or 'latest'}): {exc.details()}; "
                    f"ServerReady could not be asked whether the server is still loading its "
                    f"models ({asked.code().name}: {asked.details()}), so the model is taken as missing"
                ) from None
            if loading:
                raise exc  # a server still loading its models (started with us): waited for
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise ModelContractError(
                f"model.name: {name!r} (version {version or 'latest'}): {exc.details()}"
            ) from None
        raise ModelContractError(
            f"model.url: the server refused: {exc.code().name}: {exc.details()}"
        ) from None

    def tensors(items: list[service_pb2.ModelMetadataResponse.TensorMetadata]) -> dict[str, Tensor]:
        return {t.name: Tensor(t.datatype, tuple(t.shape)) for t in items}

    outputs = tensors(meta.outputs)
    reads = dataclasses.replace(
        read_parameters(config.config),
        unknown_items=UNKNOWN_ITEMS in outputs,
        item_keys=outputs.get(ITEM_KEYS, Tensor("", ())).datatype == "BYTES",
    )
    return ServedModel(name, tensors(meta.inputs), outputs, config.config.max_batch_size, reads)
