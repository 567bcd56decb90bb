"""One error hierarchy. Each class says whether it is worth retrying; the dispatcher's retry
decisions read that flag, never the message text."""

from __future__ import annotations


class PipelineError(Exception):
    """A subclass states its facts in its header:
    ``class ServerUnavailable(InferenceError, reason="unavailable", retriable=True)``."""

    retriable: bool = False
    server_down: bool = False  # says the server is unreachable, not that this request failed
    reason: str = "error"  # short machine-readable reason, used in dead letters and metrics

    def __init_subclass__(
        cls, *, reason: str | None = None, retriable: bool | None = None, server_down: bool | None = None
    ) -> None:
        super().__init_subclass__()
        if reason is not None:
            cls.reason = reason
        if retriable is not None:
            cls.retriable = retriable
        if server_down is not None:
            cls.server_down = server_down


# --- bad input: never retried, the event goes to the dead-letter topic ---------------------
class InvalidEvent(PipelineError, reason="invalid_event"):
    """An input that cannot become an event; ``reason`` says which check it failed
    (``malformed_json``, ``missing_field``, ``oversized``...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class StaleEvent(PipelineError, reason="deadline_exceeded"):
    """An event already past its end-to-end budget: an answer would come too late."""


# --- inference errors ------------------------------------------------------------------------
class InferenceError(PipelineError, reason="inference_error"):
    """A batch could not be inferred; the subclass says why."""


class ServerUnavailable(InferenceError, reason="unavailable", retriable=True, server_down=True):
    """Triton cannot be reached, or is not ready: waited out behind the breaker."""


class ResourceExhausted(InferenceError, reason="resource_exhausted", retriable=True):
    """Triton refused the request for lack of room (its queue, a size limit)."""


class DeadlineExceeded(InferenceError, reason="deadline_exceeded", retriable=True):
    """No answer within the request timeout."""


class StreamBroken(InferenceError, reason="stream_broken", retriable=True, server_down=True):
    """The gRPC stream ended with the request in flight."""


class ModelNotFound(InferenceError, reason="model_not_found", retriable=True, server_down=True):
    """Checked at start (triton/contract.py), so at run time it is a version switch or a
    reload in progress: waited out behind the breaker, not dead-lettered."""


class UnknownModelError(InferenceError, reason="model_error", retriable=True):
    """An in-stream error no rule recognises: retried within the budget, then dead-lettered
    (where the dead-letter budget watches it)."""


class InvalidInput(InferenceError, reason="invalid_argument"):
    """Triton refused the batch's tensors (INVALID_ARGUMENT): the rows are dead-lettered."""


class BadOutput(InferenceError, reason="bad_output"):
    """The model answered with outputs that do not fit the contract."""


class InternalError(InferenceError, reason="internal_error"):
    """Anything else raised while inferring a batch (a bug, an unforeseen client error): the
    batch's events are dead-lettered with it, the pipeline goes on."""


class RetriesExhausted(InferenceError, reason="retries_exhausted"):
    """Wraps the last retriable error once the failure budget is spent."""

    def __init__(self, last: PipelineError, attempts: int) -> None:
        super().__init__(f"{attempts} attempts, last error: {last.reason}: {last}")
        self.last = last
        self.attempts = attempts


# --- configuration ---------------------------------------------------------------------------
class TopologyError(PipelineError, reason="invalid_topology"):
    """A topology file that cannot be used: names the file, the key path and the reason."""

    def __init__(self, file: str, path: str, problem: str) -> None:
        super().__init__(f"{file}: {path or '<root>'}: {problem}")
        self.file = file
        self.path = path
        self.problem = problem


# --- the process cannot go on ------------------------------------------------------------------
class Fatal(PipelineError, reason="fatal"):
    """Stops `pipeline run` with one clear message and a non-zero exit (the supervisor
    restarts it, or a person looks): retrying inside the process would only repeat it."""

    exit_code = 1


class SourceFailed(Fatal, reason="source_failed"):
    """The Kafka source cannot go on consuming."""


class BrokerAway(Fatal, reason="broker_unreachable"):
    """No bootstrap server answered within the start's bound (``broker.start_timeout_ms``),
    or one stopped answering during the start: exit 2 with one line naming
    ``broker.bootstrap_servers``, the addresses and why, rather than a client's traceback."""

    exit_code = 2
