"""Deterministic synthetic interaction events.

Users belong to taste clusters, items to item clusters with a Zipf popularity inside each
cluster and overall; most of a user's interactions come from their cluster. That structure
is what a matrix factorisation can learn and a most-popular baseline cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

EVENT_TYPES = ("view", "click", "purchase")
EVENT_TYPE_SHARES = (0.80, 0.15, 0.05)


@dataclass(frozen=True)
class GeneratorConfig:
    users: int = 2_000
    items: int = 5_000
    clusters: int = 20
    in_cluster_share: float = 0.8
    zipf_exponent: float = 1.1
    mean_gap_ms: float = 5.0
    start_ms: int = 1_760_000_000_000
    seed: int = 7


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


class EventGenerator:
    """Yields event dicts in timestamp order; the same config always yields the same events."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._rng = rng
        self.user_cluster = rng.integers(0, config.clusters, size=config.users)
        item_cluster = rng.integers(0, config.clusters, size=config.items)
        self.item_cluster = item_cluster  # for users who react to recommendations (devstack)
        self.cluster_items = [np.flatnonzero(item_cluster == c) for c in range(config.clusters)]
        for items in self.cluster_items:
            rng.shuffle(items)  # popularity rank inside the cluster
        self.cluster_cdfs = [
            np.cumsum(_zipf_weights(len(items), config.zipf_exponent)) for items in self.cluster_items
        ]
        self.global_order = rng.permutation(config.items)
        self.global_cdf = np.cumsum(_zipf_weights(config.items, config.zipf_exponent))
        activity = rng.lognormal(0.0, 0.8, size=config.users)
        self.user_weights = activity / activity.sum()

    def events(self, count: int, first_index: int = 0) -> Iterator[dict[str, object]]:
        cfg, rng = self.config, self._rng
        chunk = 4096
        ts = float(cfg.start_ms)
        produced = 0
        while produced < count:
            n = min(chunk, count - produced)
            users = rng.choice(cfg.users, size=n, p=self.user_weights)
            in_cluster = rng.random(n) < cfg.in_cluster_share
            types = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_SHARES)
            gaps = rng.exponential(cfg.mean_gap_ms, size=n)
            ranks = np.searchsorted(self.global_cdf, rng.random(n))
            items = self.global_order[np.minimum(ranks, cfg.items - 1)]
            clusters = self.user_cluster[users]
            draws = rng.random(n)
            for c, members in enumerate(self.cluster_items):
                pick = in_cluster & (clusters == c)
                ranks = np.searchsorted(self.cluster_cdfs[c], draws[pick])
                items[pick] = members[np.minimum(ranks, len(members) - 1)]
            for i in range(n):
                ts += gaps[i]
                index = first_index + produced + i
                yield {
                    "event_id": f"ev-{cfg.seed}-{index}",
                    "user_id": int(users[i]),
                    "item_id": int(items[i]),
                    "type": EVENT_TYPES[types[i]],
                    "ts": int(ts),
                }
            produced += n


def generate(count: int, config: GeneratorConfig = GeneratorConfig()) -> list[dict[str, object]]:
    return list(EventGenerator(config).events(count))
