"""The served model against the topology, at start: what the runtime waits for before it
consumes anything. An unreachable server, or one that answers UNKNOWN or INTERNAL (a
gateway in front of Triton), or one still loading its models, is waited for, for at most
``model.start_timeout_ms`` (a rolling deploy, a restart of Triton): a warning every 30 s
names ``model.url`` and the last answer, and past the bound ``ModelUnreachable`` stops the
process (exit 2) with one line saying what was asked and what came back. An outage after
the start is the breaker's business, not this. A model that does not fit, a model a ready
server does not have, or a certificate the other side refuses (twice, unless it does not
verify: see ``security.tls_refusal``) stops the process with one clear line and exit 2. A
model the server says it does not have while its readiness cannot be told (ServerReady
failing in passing) is asked again for UNCONFIRMED_WAIT_S, then exit 1: a misspelt name and
a gateway's lasting fault look the same, and exit 2 is kept for what is certain."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import NamedTuple

import grpc

from pipeline.errors import Fatal
from pipeline.security import CredentialsError, tls_refusal
from pipeline.triton import InferenceServer
from pipeline.triton.contract import ModelContractError, ModelUnconfirmed, ServedModel, contract_problems
from pipeline.wiring import ModelCheck

log = logging.getLogger(__name__)
RETRY_S = 2.0
WARN_EVERY_S = 30.0  # between two warnings of a long wait (attempts may each take seconds)
UNCONFIRMED_WAIT_S = 60.0  # a ModelUnconfirmed answer, in a row, before it is the exit (1)


class ModelUnreachable(Fatal, reason="model_unreachable"):
    """Triton did not serve the model within ``model.start_timeout_ms``: nothing consumed."""

    exit_code = 2


class StartBound(NamedTuple):
    """When the start's wait for the model ends (the event loop's clock), and how long it is
    (``model.start_timeout_ms``, named in its messages)."""

    deadline: float
    seconds: float


def one_line(exc: grpc.aio.AioRpcError) -> str:
    """A gRPC error as its code and details, on one line."""
    details = " ".join((exc.details() or "").split())
    return f"{exc.code().name}: {details}" if details else exc.code().name


async def checked_model(
    server: InferenceServer, model: ModelCheck, bound: StartBound | None = None
) -> ServedModel:
    """The served model once it answers and fits; raises ModelContractError on a mismatch,
    CredentialsError on a refused TLS handshake, ModelUnconfirmed when the server says it has
    no such model but cannot say whether it is still loading, for UNCONFIRMED_WAIT_S, and
    ModelUnreachable when no answer fits within ``bound`` (None: waits as long as it takes)."""
    sig = model.signature
    loop = asyncio.get_running_loop()
    unconfirmed_since: float | None = None
    unconfirmed: ModelUnconfirmed | None = None  # the last attempt's, if that was its answer
    asked = f"model {sig.name!r} (version {sig.version or 'latest'})"
    last = "none"
    said: float | None = None  # when the last warning was given (the loop's clock)

    def time_to_say() -> bool:
        nonlocal said
        now = loop.time()
        if said is not None and now - said < WARN_EVERY_S:
            return False
        said = now
        return True

    for attempt in itertools.count():
        if bound is not None and loop.time() >= bound.deadline:
            if unconfirmed is not None:  # not certain to be a misconfiguration: exit 1, as it says
                raise unconfirmed
            raise ModelUnreachable(
                f"model.url: Triton at {model.url} did not serve {asked} within {bound.seconds:g} s "
                f"(model.start_timeout_ms): asked {attempt} times, the last answer {last}"
            )
        unconfirmed = None
        try:
            served = await _served_model(server, model, bound)
            break
        except ModelUnconfirmed as exc:
            now = loop.time()
            unconfirmed_since = now if unconfirmed_since is None else unconfirmed_since
            if now - unconfirmed_since >= UNCONFIRMED_WAIT_S:
                raise
            if time_to_say():
                log.warning("model contract not checked yet: %s; asking again", exc)
            unconfirmed = exc
        except TimeoutError:  # the start's bound came during an attempt
            last = "none (the attempt under way was cut at the bound)"
        except grpc.aio.AioRpcError as exc:
            unconfirmed_since = None
            if model.tls is not None and (refusal := await tls_refusal(model.url, model.tls)):
                # A certificate the other side refuses: waiting will not change it.
                raise CredentialsError(
                    f"model.tls: the TLS handshake with Triton at {model.url} failed: {refusal}"
                ) from None
            last = one_line(exc)
            if time_to_say():  # a long outage: a line now and then, not a flood
                log.warning(
                    "model.url: Triton at %s has not served %s yet: %s%s",
                    model.url,
                    asked,
                    last,
                    _left(bound, loop),
                )
        await _pause(bound, loop)
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


async def _served_model(server: InferenceServer, model: ModelCheck, bound: StartBound | None) -> ServedModel:
    """One attempt, cut at the bound (TimeoutError)."""
    sig = model.signature
    if bound is None:
        return await server.served_model(sig.name, sig.version)
    remaining = bound.deadline - asyncio.get_running_loop().time()
    return await asyncio.wait_for(server.served_model(sig.name, sig.version), max(remaining, 0.0))


async def _pause(bound: StartBound | None, loop: asyncio.AbstractEventLoop) -> None:
    """RETRY_S between attempts, or less: up to the bound, for the last word to come at it."""
    if bound is None:
        await asyncio.sleep(RETRY_S)
    else:
        await asyncio.sleep(min(RETRY_S, max(0.0, bound.deadline - loop.time())))


def _left(bound: StartBound | None, loop: asyncio.AbstractEventLoop) -> str:
    if bound is None:
        return "; asking again"
    left = max(0.0, bound.deadline - loop.time())
    return f"; asking again for {left:.0f} s more (model.start_timeout_ms {bound.seconds:g} s), then exit 2"
