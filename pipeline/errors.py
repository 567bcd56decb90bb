"""One error hierarchy. Each class says whether it is worth retrying; the dispatcher's retry
decisions read that flag, never the message text."""

from __future__ import annotations


class PipelineError(Exception):
    retriable: bool = False
    server_down: bool = False  # says the server is unreachable, not that this request failed
    reason: str = "error"  # short machine-readable reason, used in dead letters and metrics


# --- bad input: never retried, the event goes to the dead-letter topic ---------------------
class InvalidEvent(PipelineError):
    """An input that cannot become an event; ``reason`` says which check it failed
    (``malformed_json``, ``missing_field``, ``oversized``...)."""

    reason = "invalid_event"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class StaleEvent(PipelineError):
    reason = "deadline_exceeded"


# --- inference errors ------------------------------------------------------------------------
class InferenceError(PipelineError):
    reason = "inference_error"


class ServerUnavailable(InferenceError):
    retriable = True
    server_down = True
    reason = "unavailable"


class ResourceExhausted(InferenceError):
    retriable = True
    reason = "resource_exhausted"


class DeadlineExceeded(InferenceError):
    retriable = True
    reason = "deadline_exceeded"


class StreamBroken(InferenceError):
    retriable = True
    server_down = True
    reason = "stream_broken"


class ModelNotFound(InferenceError):
    """Checked at start (triton/contract.py), so at run time it is a version switch or a
    reload in progress: waited out behind the breaker, not dead-lettered."""

    retriable = True
    server_down = True
    reason = "model_not_found"


class UnknownModelError(InferenceError):
    """An in-stream error no rule recognises: retried within the budget, then dead-lettered
    (where the dead-letter budget watches it)."""

    retriable = True
    reason = "model_error"


class InvalidInput(InferenceError):
    reason = "invalid_argument"


class BadOutput(InferenceError):
    reason = "bad_output"


class InternalError(InferenceError):
    """Anything else raised while inferring a batch (a bug, an unforeseen client error): the
    batch's events are dead-lettered with it, the pipeline goes on."""

    reason = "internal_error"


class RetriesExhausted(InferenceError):
    """Wraps the last retriable error once the failure budget is spent."""

    reason = "retries_exhausted"

    def __init__(self, last: PipelineError, attempts: int) -> None:
        super().__init__(f"{attempts} attempts, last error: {last.reason}: {last}")
        self.last = last
        self.attempts = attempts


# --- configuration ---------------------------------------------------------------------------
class TopologyError(PipelineError):
    """A topology file that cannot be used: names the file, the key path and the reason."""

    reason = "invalid_topology"

    def __init__(self, file: str, path: str, problem: str) -> None:
        super().__init__(f"{file}: {path or '<root>'}: {problem}")
        self.file = file
        self.path = path
        self.problem = problem


# --- the process cannot go on ------------------------------------------------------------------
class Fatal(PipelineError):
    """Stops `pipeline run` with one clear message and a non-zero exit (the supervisor
    restarts it, or a person looks): retrying inside the process would only repeat it."""

    exit_code = 1
    reason = "fatal"


class SourceFailed(Fatal):
    reason = "source_failed"
