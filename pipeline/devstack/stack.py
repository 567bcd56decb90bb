"""The embedded stack as one object: a broker and a Triton serving the project's model
repository (trained first if absent). Used by `pipeline dev`, the tests and the benchmarks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.devstack.broker import EmbeddedBroker
from pipeline.devstack.triton import EmbeddedTriton
from pipeline.recsys.generator import EventGenerator, GeneratorConfig
from pipeline.recsys.train import TrainReport, serving_code, train_and_write

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("var")
TRAINING_EVENTS = 100_000


def has_model(repository: Path, name: str = "recommender") -> bool:
    model_dir = repository / name
    return model_dir.is_dir() and any(p.name.isdigit() for p in model_dir.iterdir())


def ensure_model(
    repository: Path, generator: GeneratorConfig = GeneratorConfig(), events: int = TRAINING_EVENTS
) -> TrainReport | None:
    """Train the recommender on synthetic events unless the repository already has it; a
    version trained by an earlier release is served with this release's code."""
    if has_model(repository):
        refresh_serving_code(repository / "recommender")
        return None
    log.info("training the recommender on %d synthetic events", events)
    data = list(EventGenerator(generator).events(events))
    report = train_and_write(data, repository, generator.items)
    log.info(
        "model version %d: hit@10 %.3f vs popularity %.3f",
        report.version,
        report.hit_rate_model,
        report.hit_rate_popularity,
    )
    return report


# How this project's model.py begins, in every release: a version whose model.py begins
# otherwise is someone's own model and is left alone.
MODEL_OPENING = b'"""Triton Python-backend recommender:'


def refresh_serving_code(model_dir: Path) -> None:
    """The stack's repository outlives releases (var/...): each version this project's
    trainer wrote gets this release's model.py and scoring.py, so that a benchmark or
    `pipeline dev` never serves stale code (older arrays are still read: scoring.Recommender's
    defaults). Each file is replaced whole (os.replace): a Triton loading it meanwhile reads
    the old file or the new one."""
    code = {name: source.read_bytes() for name, source in serving_code().items()}
    for version_dir in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
        model = version_dir / "model.py"
        if not model.exists() or not model.read_bytes().startswith(MODEL_OPENING):
            continue
        for name, content in code.items():
            target = version_dir / name
            if target.exists() and target.read_bytes() == content:
                continue
            partial = target.with_name(f".{name}.new")
            partial.write_bytes(content)
            os.replace(partial, target)
            log.info("model version %s: %s replaced by this release's", version_dir.name, name)


@dataclass
class EmbeddedStack:
    broker: EmbeddedBroker
    triton: EmbeddedTriton
    model_repository: Path

    @classmethod
    def start(
        cls, workdir: Path, model_repository: Path | None = None, die_with_parent: bool = False
    ) -> EmbeddedStack:
        """``die_with_parent`` (pipeline dev): the broker and Triton (its stubs too) stop when
        this process is killed, however (see ChildProcess)."""
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        repository = (model_repository or workdir / "model_repository").resolve()
        ensure_model(repository)
        broker = EmbeddedBroker(workdir)
        triton = EmbeddedTriton(workdir, repository)
        broker.die_with_parent = triton.die_with_parent = die_with_parent
        try:
            broker.start()
            triton.start()
            broker.wait_until(broker.listening, 30, "listening")
            triton.wait_until(triton.ready, 180, "ready")
        except BaseException:
            triton.stop()
            broker.stop()
            raise
        return cls(broker, triton, repository)

    def stop(self) -> None:
        self.triton.stop()
        self.broker.stop()
