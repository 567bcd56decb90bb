"""One pass over the pipeline's Prometheus registry, read back as values (plain data, no
I/O): what the live page is drawn from, so it shows what /metrics says and nothing else."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from prometheus_client.registry import Collector

Labels = Mapping[str, str]
Buckets = tuple[tuple[float, float], ...]  # (le, cumulative count), ascending; the last le is +Inf


class Reading:
    """Every sample of one ``registry.collect()``, by sample name (``*_total``, ``*_bucket``
    as exposed), with its labels."""

    def __init__(self, samples: Mapping[str, Sequence[tuple[Labels, float]]]) -> None:
        self.samples = samples

    @classmethod
    def of(cls, registry: Collector) -> Reading:
        samples: defaultdict[str, list[tuple[Labels, float]]] = defaultdict(list)
        for family in registry.collect():
            for sample in family.samples:
                samples[sample.name].append((sample.labels, sample.value))
        return cls(samples)

    def series(self, name: str) -> Sequence[tuple[Labels, float]]:
        return self.samples.get(name, ())

    def has(self, name: str) -> bool:
        return bool(self.samples.get(name))

    def total(self, name: str, **match: str) -> float:
        """The sum over the series whose labels match (NaN values, such as an age not known
        yet, left out)."""
        return sum(
            value
            for labels, value in self.series(name)
            if not math.isnan(value) and all(labels.get(k) == v for k, v in match.items())
        )

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Values summed per value of ``label``."""
        found: defaultdict[str, float] = defaultdict(float)
        for labels, value in self.series(name):
            if label in labels and all(labels.get(k) == v for k, v in match.items()):
                found[labels[label]] += value
        return dict(found)

    def buckets(self, histogram: str, **match: str) -> Buckets:
        """A histogram's cumulative buckets, summed over the series that match."""
        counts: defaultdict[float, float] = defaultdict(float)
        for labels, value in self.series(f"{histogram}_bucket"):
            if all(labels.get(k) == v for k, v in match.items()):
                counts[float(labels["le"])] += value
        return tuple(sorted(counts.items()))

    def buckets_by(self, histogram: str, label: str) -> dict[str, Buckets]:
        values = {labels[label] for labels, _ in self.series(f"{histogram}_bucket") if label in labels}
        return {value: self.buckets(histogram, **{label: value}) for value in values}


def increase(newer: Buckets, older: Buckets | None) -> Buckets:
    """What a histogram's buckets gained between two readings (all of it without an older)."""
    if not older or [le for le, _ in older] != [le for le, _ in newer]:
        return newer
    return tuple((le, max(0.0, now - before)) for (le, now), (_, before) in zip(newer, older, strict=True))


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of what cumulative buckets counted, interpolated inside its bucket as
    Prometheus' histogram_quantile does (the +Inf bucket answers the highest finite bound);
    None when nothing was counted."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


def count(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0
