"""Retry policy: how often and how far apart a retriable error is retried (plain data)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline import errors


@dataclass(frozen=True)
class RetryPolicy:
    """model.retry's attempts and backoffs (defaults: the schema's)."""

    max_attempts: int
    backoff_ms: int
    max_backoff_ms: int

    def should_retry(self, error: errors.PipelineError, attempt: int) -> bool:
        return error.retriable and attempt < self.max_attempts

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter: spreads retries of many requests apart."""
        ceiling = min(self.max_backoff_ms, self.backoff_ms * 2 ** (attempt - 1))
        return (rng or random).uniform(0, ceiling) / 1000.0
