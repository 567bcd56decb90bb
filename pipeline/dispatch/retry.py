"""Retry policy and error classification (plain data, no I/O).

Classification turns what Triton and gRPC report into the project's error classes; it is
the only place that looks at codes and messages. Retry decisions then read ``retriable``."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from pipeline import errors

_RETRIABLE_CODES: dict[grpc.StatusCode, type[errors.InferenceError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.ServerUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.StreamBroken,
    grpc.StatusCode.ABORTED: errors.StreamBroken,
    grpc.StatusCode.INTERNAL: errors.StreamBroken,
    grpc.StatusCode.UNKNOWN: errors.StreamBroken,
}
_FATAL_CODES: dict[grpc.StatusCode, type[errors.InferenceError]] = {
    grpc.StatusCode.NOT_FOUND: errors.ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.UNIMPLEMENTED: errors.ModelNotFound,
}

# Triton's in-stream errors carry only a message (ModelStreamInferResponse.error_message).
_MESSAGE_CLASSES: tuple[tuple[str, type[errors.InferenceError]], ...] = (
    ("unknown model", errors.ModelNotFound),
    ("is not found", errors.ModelNotFound),
    ("not ready", errors.ServerUnavailable),
    ("not healthy", errors.ServerUnavailable),  # the Python backend's stub process crashed
    ("unavailable", errors.ServerUnavailable),
    ("timeout", errors.DeadlineExceeded),
    ("exceeds", errors.ResourceExhausted),
    ("queue", errors.ResourceExhausted),
    ("unexpected shape", errors.InvalidInput),
    ("unexpected datatype", errors.InvalidInput),
    ("outside the catalogue", errors.InvalidInput),
    ("invalid", errors.InvalidInput),
)


def classify_status(code: grpc.StatusCode, message: str) -> errors.InferenceError:
    cls = _RETRIABLE_CODES.get(code) or _FATAL_CODES.get(code) or errors.StreamBroken
    return cls(f"{code.name}: {message}")


def classify_message(message: str) -> errors.InferenceError:
    lowered = message.lower()
    for needle, cls in _MESSAGE_CLASSES:
        if needle in lowered:
            return cls(message)
    return errors.UnknownModelError(message)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_ms: int = 50
    max_backoff_ms: int = 2_000

    def should_retry(self, error: errors.PipelineError, attempt: int) -> bool:
        return error.retriable and attempt < self.max_attempts

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter: spreads retries of many requests apart."""
        ceiling = min(self.max_backoff_ms, self.backoff_ms * 2 ** (attempt - 1))
        return (rng or random).uniform(0, ceiling) / 1000.0
