"""The served model against the topology, at start: what the runtime waits for before it
consumes anything. An unreachable server is waited for (an outage at start is the
breaker's business, like any other); a model that does not fit, or a certificate the
other side refuses, stops the process with one clear line."""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc

from pipeline.security import CredentialsError, tls_refusal
from pipeline.triton import InferenceServer
from pipeline.triton.contract import ModelContractError, ServedModel, contract_problems
from pipeline.wiring import ModelCheck

log = logging.getLogger(__name__)
RETRY_S = 2.0
LOG_EVERY = 15  # retries between two warnings


async def checked_model(server: InferenceServer, model: ModelCheck) -> ServedModel:
    """The served model once it answers and fits; raises ModelContractError on a mismatch,
    CredentialsError on a refused TLS handshake."""
    sig = model.signature
    for attempt in itertools.count():
        try:
            served = await server.served_model(sig.name, sig.version)
            break
        except grpc.aio.AioRpcError as exc:
            if model.tls is not None and (refusal := await tls_refusal(model.url, model.tls)):
                # A certificate the other side refuses: waiting will not change it.
                raise CredentialsError(
                    f"model.tls: the TLS handshake with Triton at {model.url} failed: {refusal}"
                ) from None
            if attempt % LOG_EVERY == 0:  # a long outage: a line now and then, not a flood
                log.warning("model contract not checked yet, Triton at %s: %s", model.url, exc.code().name)
            await asyncio.sleep(RETRY_S)
    problems = contract_problems(served, sig, model.largest)
    if problems:
        raise ModelContractError("; ".join(problems))
    log.info(
        "model %s fits the topology (max_batch_size %d; request priority %s, timeout %s)",
        served.name,
        served.max_batch_size,
        "sent" if served.reads.priority else "not read by its queue, not sent",
        "sent" if served.reads.timeout else "not read by its queue, not sent",
    )
    return served
