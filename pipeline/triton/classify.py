"""What Triton and gRPC report → the project's error classes (pipeline/errors.py). The only
place that looks at status codes and messages; retry decisions then read the class's
``retriable`` and ``server_down`` flags."""

from __future__ import annotations

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
