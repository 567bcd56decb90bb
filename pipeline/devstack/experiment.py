"""`pipeline dev --experiment`: the trained model against the most-popular baseline, 50/50,
with a random version scored in the shadow, on users who react to what they are shown.

The three versions live under a model of their own (``recommender_ab``), so the stack's
``recommender`` (what `pipeline dev` serves otherwise, its latest version) never changes:
version 1 is a copy of the trained recommender's latest version, 2 the popularity baseline
and 3 a random model, trained on the same synthetic events. They are written before Triton
starts (it loads its repository at start)."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.devstack.stack import TRAINING_EVENTS, refresh_serving_code
from pipeline.quality.outcomes import wilson
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.train import train_and_write
from pipeline.topology.schema import Topology

log = logging.getLogger(__name__)
MODEL = "recommender_ab"
ARMS = (("trained", "1", 0.5), ("popularity", "2", 0.5))
SHADOW = ("random", "3")


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.is_dir() else []


def ensure_experiment_model(repository: Path, generator: GeneratorConfig = GeneratorConfig()) -> None:
    """Versions 1 (trained: the stack's recommender, copied), 2 (popularity) and 3 (random)
    of ``recommender_ab``, unless it has them."""
    model_dir = repository / MODEL
    if _versions(model_dir) == [1, 2, 3]:
        refresh_serving_code(model_dir)
        return
    shutil.rmtree(model_dir, ignore_errors=True)  # a half-written one from an interrupted start
    trained = repository / "recommender"
    latest = max(_versions(trained))
    model_dir.mkdir(parents=True)
    shutil.copytree(trained / str(latest), model_dir / "1")
    log.info("experiment model: trained version copied; training popularity and random versions")
    events = list(EventGenerator(generator).events(TRAINING_EVENTS))
    for kind, version in (("popularity", 2), ("random", 3)):
        report = train_and_write(events, repository, generator.items, model_name=MODEL, kind=kind)
        if report.version != version:
            raise RuntimeError(f"{MODEL}: {kind} written as version {report.version}, not {version}")


def experiment_topology(topology: Topology) -> Topology:
    """The topology serving ``recommender_ab`` in an experiment of its three versions (the
    guard off: the demo shows both arms for the whole run)."""
    arms: list[dict[str, Any]] = [{"id": a, "version": v, "share": s} for a, v, s in ARMS]
    arms.append({"id": SHADOW[0], "version": SHADOW[1], "shadow": True, "max_in_flight": 2})
    data = topology.model_dump(mode="python")
    data["model"].update(name=MODEL, version="")
    data["experiment"] = {"id": "dev-trained-vs-popularity", "arms": arms, "guard": {"enabled": False}}
    return Topology.model_validate(data)


def arms_summary(counts: dict[tuple[str, str], Counter[str]]) -> dict[str, dict[str, object]]:
    """Each arm's online outcomes (over the versions that served it): judged, next-item
    hits, hit@K with its 95 % interval."""
    by_arm: dict[str, Counter[str]] = {}
    versions: dict[str, list[str]] = {}
    for (arm, version), c in sorted(counts.items()):
        by_arm.setdefault(arm, Counter()).update(c)
        versions.setdefault(arm, []).append(version)
    out: dict[str, dict[str, object]] = {}
    for arm, c in by_arm.items():
        judged = c["hit"] + c["miss"]
        low, high = wilson(c["hit"], judged)
        out[arm] = {
            "versions": versions[arm],
            "judged": judged,
            "hits": c["hit"],
            "no_return": c["no_return"],
            "hit_rate": round(c["hit"] / judged, 4) if judged else None,
            "hit_rate_95": [round(low, 4), round(high, 4)],
            "shadow": arm == SHADOW[0],
        }
    return out
