"""The shipped topology pointed at the embedded stack: for tests, benchmarks and scripts."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.tuning import EMBEDDED_BROKER, STACK_GROUP_SESSION

SHIPPED = Path(__file__).resolve().parents[1] / "topologies" / "recommendations.yaml"


def topology_on_stack(
    stack: EmbeddedStack,
    fresh: bool = True,
    base: Path = SHIPPED,
    quick_join: bool = True,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """``base`` as a dict, with the stack's broker and Triton addresses and the embedded
    broker's fetch wait, one assignment strategy and (``quick_join``) a shorter group
    session; ``fresh``: on new topics and a new group (so runs on one broker never meet).
    Each keyword merges into that section. Returns the dict, for further edits before
    validation."""
    data: dict[str, Any] = yaml.safe_load(base.read_text())
    data["broker"]["bootstrap_servers"] = stack.broker.bootstrap
    data["model"]["url"] = stack.triton.grpc_url
    # The shipped topologies are for real Kafka; the embedded broker answers a fetch only at
    # its max wait, even with data ready (devstack/tuning.py).
    data["source"]["fetch_max_wait_ms"] = EMBEDDED_BROKER.fetch_max_wait_ms
    # no member of an earlier release joins these groups; each strategy offered holds a join
    data["source"]["offer_round_robin"] = False
    if quick_join:  # a 3 s join instead of 5 (tuning.py); long runs keep the shipped session
        data["source"].update(STACK_GROUP_SESSION)
    if fresh:
        tag = uuid.uuid4().hex[:8]
        data["source"].update({"topics": [f"in-{tag}"], "group_id": f"g-{tag}"})
        data["sink"].update({"topic": f"out-{tag}", "dead_letter_topic": f"dlq-{tag}"})
        data.setdefault("state", {})["changelog_topic"] = f"state-{tag}"
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data
