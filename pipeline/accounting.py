"""What each write finished, counted: recommendations, dead letters by reason, duplicates.
It feeds the dead-letter budget, which holds consumption when one reason takes too large a
share of the traffic (a poisoned topic, a model refusing everything)."""

from __future__ import annotations

import logging

from pipeline.control.dead_letter_budget import DeadLetterBudget
from pipeline.events import OutputRecord, SinkBatch
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)


class Accounting:
    def __init__(
        self,
        metrics: Metrics,
        dead_letter_topic: str,
        budget: DeadLetterBudget | None,
        output_topic: str = "",
    ) -> None:
        self.metrics = metrics
        self.dead_letter_topic = dead_letter_topic
        self.output_topic = output_topic  # set: only its records are recommendations (not examples)
        self.budget = budget  # None: disabled

    @property
    def holding(self) -> bool:
        """The dead-letter budget tripped: consumption is held."""
        return self.budget is not None and self.budget.holding

    def count(self, written: list[OutputRecord], batch: SinkBatch, finished: int) -> None:
        dlq = self.dead_letter_topic
        reasons = [
            dict(rec.headers).get("dlq.reason", b"unknown").decode() for rec in written if rec.topic == dlq
        ]
        metrics = self.metrics
        metrics.events_finished.inc(finished)
        if self.output_topic:
            metrics.recommendations.inc(sum(rec.topic == self.output_topic for rec in written))
        else:
            metrics.recommendations.inc(len(written) - len(reasons))
        metrics.duplicate_events.inc(batch.duplicates)
        for reason in reasons:
            metrics.dead_letters.labels(reason).inc()
        if self.budget is not None and (trip := self.budget.observe(finished, reasons)):
            log.error(
                "DEAD-LETTER BUDGET: %.0f%% of the last %d events dead-lettered as %s: holding "
                "consumption for %.0f s (not ready meanwhile); the rest waits in Kafka",
                trip.share * 100,
                trip.events,
                trip.reason,
                trip.hold_s,
            )
            metrics.dead_letter_trips.labels(trip.reason).inc()
