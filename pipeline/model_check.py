"""The served model against the topology, at start: what the runtime waits for before it
consumes anything. An unreachable server, or one that answers UNKNOWN or INTERNAL (a
gateway in front of Triton), is waited for (an outage at start is the breaker's business,
like any other); a model that does not fit, a model a ready server does not have, or a
certificate the other side refuses (twice, unless it does not verify: see
``security.tls_refusal``) stops the process with one clear line and exit 2. A model the
server says it does not have while its readiness cannot be told (ServerReady failing in
passing) is asked again for UNCONFIRMED_WAIT_S, then exit 1: a misspelt name and a
gateway's lasting fault look the same, and exit 2 is kept for what is certain."""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc

from pipeline.security import CredentialsError, tls_refusal
from pipeline.triton import InferenceServer
from pipeline.triton.contract import ModelContractError, ModelUnconfirmed, ServedModel, contract_problems
from pipeline.wiring import ModelCheck

log = logging.getLogger(__name__)
RETRY_S = 2.0
LOG_EVERY = 15  # retries between two warnings
UNCONFIRMED_WAIT_S = 60.0  # a ModelUnconfirmed answer, in a row, before it is the exit (1)


async def checked_model(server: InferenceServer, model: ModelCheck) -> ServedModel:
    """The served model once it answers and fits; raises ModelContractError on a mismatch,
    CredentialsError on a refused TLS handshake, ModelUnconfirmed when the server says it has
    no such model but cannot say whether it is still loading, for UNCONFIRMED_WAIT_S."""
    sig = model.signature
    loop = asyncio.get_running_loop()
    unconfirmed_since: float | None = None
    for attempt in itertools.count():
        try:
            served = await server.served_model(sig.name, sig.version)
            break
        except ModelUnconfirmed as exc:
            now = loop.time()
            unconfirmed_since = now if unconfirmed_since is None else unconfirmed_since
            if now - unconfirmed_since >= UNCONFIRMED_WAIT_S:
                raise
            if attempt % LOG_EVERY == 0:
                log.warning("model contract not checked yet: %s; asking again", exc)
            await asyncio.sleep(RETRY_S)
        except grpc.aio.AioRpcError as exc:
            unconfirmed_since = None
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
