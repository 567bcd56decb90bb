"""Which arm of the experiment serves a user: a sticky hash of the user id, seeded by the
experiment's id, into 10,000 buckets split by the live arms' shares. A user keeps their arm
for as long as the experiment stands; an arm that is stopped (the guard's verdict, or its
version not served) hands its users to the control arm, and no other user moves.

One owner of the arms' state: the guard and the dispatcher's fallback stop arms through
``stop``; the batch step asks ``route``; outputs carry the serving arm."""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
from typing import NamedTuple

import numpy as np

from pipeline.metrics import Metrics
from pipeline.topology.schema import Experiment

log = logging.getLogger(__name__)
BUCKETS = 10_000
_MASK = (1 << 64) - 1


def experiment_seed(experiment_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(experiment_id.encode(), digest_size=8).digest(), "big")


def user_bucket(seed: int, user_id: int) -> int:
    """SplitMix64's finalizer on the seeded id: consecutive ids spread evenly, in a few
    integer operations (the batch step asks once per user and window)."""
    z = (user_id + seed) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % BUCKETS


class ArmInfo(NamedTuple):
    id: str
    version: str
    shadow: bool
    max_in_flight: int
    max_rows_per_s: float


class Arms:
    def __init__(self, experiment: Experiment, metrics: Metrics | None = None) -> None:
        self.experiment_id = experiment.id
        self.seed = experiment_seed(experiment.id)
        self.control = experiment.control_arm.id
        self.info = {
            a.id: ArmInfo(a.id, a.version, a.shadow, a.max_in_flight, a.max_rows_per_s)
            for a in experiment.arms
        }
        self.shadows = [info for info in self.info.values() if info.shadow]
        self._edges: list[int] = []  # upper bucket bound of each live arm with a share
        self._edge_arms: list[str] = []
        upper = 0.0
        for arm in experiment.arms:
            if arm.shadow or arm.share <= 0:
                continue
            upper += arm.share * BUCKETS
            self._edges.append(round(upper))
            self._edge_arms.append(arm.id)
        self._edges[-1] = BUCKETS  # shares adding up to 1 within rounding: the last takes the rest
        self._edges_array = np.asarray(self._edges, dtype=np.uint64)
        self.stopped: dict[str, str] = {}  # arm → why it serves no user now
        self.metrics = metrics
        if metrics is not None:
            for info in self.info.values():
                metrics.arm_serving.labels(info.id, info.version).set_function(
                    functools.partial(self._serving_value, info.id)
                )

    def _serving_value(self, arm: str) -> float:
        return 0.0 if arm in self.stopped else 1.0

    def assigned(self, user_id: int) -> str:
        """The arm the experiment gave the user (stopped or not)."""
        return self._edge_arms[bisect.bisect_right(self._edges, user_bucket(self.seed, user_id))]

    def route(self, user_id: int) -> str:
        """The arm that serves the user now: theirs, or the control once theirs is stopped."""
        arm = self._edge_arms[bisect.bisect_right(self._edges, user_bucket(self.seed, user_id))]
        return self.control if arm in self.stopped else arm

    def route_many(self, user_ids: list[int]) -> list[str]:
        """``route`` of each user, in one numpy pass (the batch step asks per window)."""
        z = np.fromiter(user_ids, dtype=np.uint64, count=len(user_ids)) + np.uint64(self.seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        buckets = (z ^ (z >> np.uint64(31))) % np.uint64(BUCKETS)
        names = [self.control if arm in self.stopped else arm for arm in self._edge_arms]
        return [names[i] for i in np.searchsorted(self._edges_array, buckets, side="right").tolist()]

    def serving(self, arm: str) -> str:
        """The arm a batch routed to ``arm`` is served by now (stopped since: the control)."""
        return self.control if arm in self.stopped else arm

    def version(self, arm: str) -> str:
        return self.info[arm].version

    def stop(self, arm: str, reason: str, detail: str) -> bool:
        """Its users go to the control arm from now on (the control itself is never stopped:
        there is nothing to fall back to). False: already stopped, or the control."""
        if arm == self.control or arm in self.stopped or arm not in self.info:
            return False
        self.stopped[arm] = reason
        log.warning(
            "experiment %s: arm %s (version %s) stopped (%s): %s; its users are served by %s",
            self.experiment_id,
            arm,
            self.info[arm].version,
            reason,
            detail,
            self.control,
        )
        if self.metrics is not None:
            self.metrics.arm_stops.labels(arm, reason).inc()
        return True
