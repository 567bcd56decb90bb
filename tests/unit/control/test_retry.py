"""Error classification and the retry policy."""

from __future__ import annotations

import random

import grpc
import pytest

from pipeline import errors
from pipeline.control.retry import RetryPolicy
from pipeline.triton.classify import classify_message, classify_status


def policy_with(max_attempts: int = 4, backoff_ms: int = 50, max_backoff_ms: int = 2_000) -> RetryPolicy:
    return RetryPolicy(max_attempts, backoff_ms, max_backoff_ms)


@pytest.mark.parametrize(
    ("code", "cls", "retriable"),
    [
        (grpc.StatusCode.UNAVAILABLE, errors.ServerUnavailable, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded, True),
        (grpc.StatusCode.CANCELLED, errors.StreamBroken, True),
        (grpc.StatusCode.ABORTED, errors.StreamBroken, True),
        (grpc.StatusCode.INTERNAL, errors.StreamBroken, True),
        (grpc.StatusCode.UNKNOWN, errors.StreamBroken, True),
        (grpc.StatusCode.NOT_FOUND, errors.ModelNotFound, True),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInput, False),
        (grpc.StatusCode.UNIMPLEMENTED, errors.ModelNotFound, True),
    ],
)
def test_classify_status(code, cls, retriable):
    err = classify_status(code, "details from the server")
    assert type(err) is cls
    assert err.retriable is retriable
    assert isinstance(err, errors.InferenceError)
    assert str(err) == f"{code.name}: details from the server"


def test_unmapped_status_is_a_retriable_broken_stream():
    err = classify_status(grpc.StatusCode.FAILED_PRECONDITION, "x")
    assert type(err) is errors.StreamBroken
    assert err.retriable


@pytest.mark.parametrize(
    ("message", "cls", "retriable"),
    [
        ("Request for unknown model: 'recommender' is not found", errors.ModelNotFound, True),
        ("model 'recommender' version 9 is not found", errors.ModelNotFound, True),
        ("Request for UNKNOWN MODEL 'x'", errors.ModelNotFound, True),
        ("Server is not ready", errors.ServerUnavailable, True),
        ("Stub process 'recommender_0_0' is not healthy.", errors.ServerUnavailable, True),
        ("Request timeout expired", errors.DeadlineExceeded, True),
        ("Exceeds maximum queue size", errors.ResourceExhausted, True),
        ("request rejected: queue full", errors.ResourceExhausted, True),
        ("unexpected shape for input 'HISTORY' for model 'recommender'", errors.InvalidInput, False),
        ("inference input 'USER_ID' data-type is 'FP32', unexpected datatype", errors.InvalidInput, False),
        ("item id 99999999 outside the catalogue", errors.InvalidInput, False),
        ("Invalid argument: bad tensor", errors.InvalidInput, False),
        ("something nobody anticipated", errors.UnknownModelError, True),
    ],
)
def test_classify_message(message, cls, retriable):
    err = classify_message(message)
    assert type(err) is cls
    assert err.retriable is retriable
    assert str(err) == message


@pytest.mark.parametrize(
    "cls",
    [errors.ServerUnavailable, errors.ResourceExhausted, errors.DeadlineExceeded, errors.StreamBroken],
)
def test_should_retry_retriable_errors_until_max_attempts(cls):
    policy = policy_with(max_attempts=3)
    err = cls("x")
    assert [policy.should_retry(err, n) for n in (1, 2, 3, 4)] == [True, True, False, False]


@pytest.mark.parametrize(
    "err",
    [
        errors.InvalidInput("x"),
        errors.BadOutput("x"),
        errors.InferenceError("x"),
        errors.InvalidEvent("malformed_json", "x"),
    ],
)
def test_should_not_retry_fatal_errors(err):
    assert not policy_with(max_attempts=10).should_retry(err, 1)


def test_single_attempt_policy_never_retries():
    assert not policy_with(max_attempts=1).should_retry(errors.ServerUnavailable("x"), 1)


def test_retries_exhausted_wraps_the_last_error():
    last = errors.ServerUnavailable("down")
    err = errors.RetriesExhausted(last, 4)
    assert err.last is last
    assert err.attempts == 4
    assert not err.retriable
    assert "4 attempts" in str(err)
    assert "unavailable" in str(err)


class _Top:
    def uniform(self, a: float, b: float) -> float:
        return b


class _Bottom:
    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.parametrize(
    ("attempt", "ceiling_s"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.4), (5, 0.8), (6, 1.6), (7, 2.0), (12, 2.0)],
)
def test_backoff_ceiling_doubles_up_to_max(attempt, ceiling_s):
    policy = policy_with(backoff_ms=50, max_backoff_ms=2_000)
    assert policy.backoff_s(attempt, _Top()) == pytest.approx(ceiling_s)
    assert policy.backoff_s(attempt, _Bottom()) == 0.0


def test_backoff_is_full_jitter_within_bounds():
    policy = policy_with(backoff_ms=50, max_backoff_ms=300)
    rng = random.Random(1234)
    for attempt in range(1, 8):
        ceiling = min(300, 50 * 2 ** (attempt - 1)) / 1000.0
        samples = [policy.backoff_s(attempt, rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # spread over the whole range…
        assert min(samples) < 0.2 * ceiling  # …down to zero, not a fixed delay


def test_backoff_without_rng_uses_module_random():
    policy = policy_with(backoff_ms=10, max_backoff_ms=40)
    samples = [policy.backoff_s(5) for _ in range(200)]
    assert all(0.0 <= s <= 0.04 for s in samples)
    assert len(set(samples)) > 1


def test_zero_backoff_retries_immediately():
    assert policy_with(backoff_ms=0).backoff_s(3, random.Random(0)) == 0.0
