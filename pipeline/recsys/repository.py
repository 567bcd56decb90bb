"""The writer of a versioned Triton model repository: each version gets its arrays
(embeddings.npz), this release's serving code and the model's config.pbtxt, whose version
policy lists the versions Triton keeps loaded."""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from pipeline.recsys import scoring

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "recommender"


def serving_code() -> dict[str, Path]:
    """The files a model version is served with, by name: this release's model.py and
    scoring.py (the same scoring the trainer evaluates with)."""
    return {"model.py": TEMPLATE_DIR / "1" / "model.py", "scoring.py": Path(scoring.__file__)}


def scheduling_block(priority_levels: int) -> str:
    """The dynamic_batching lines for ``priority_levels`` (none for 0). Requests without a
    priority take the lowest level; a per-request timeout may shorten the queue wait."""
    if priority_levels <= 0:
        return ""
    return (
        f"\n  priority_levels: {priority_levels}"
        f"\n  default_priority_level: {priority_levels}"
        "\n  default_queue_policy { allow_timeout_override: true, timeout_action: REJECT }"
    )


def model_versions(model_dir: Path) -> list[int]:
    """The version numbers present under ``model_dir`` (none if it does not exist), sorted."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    """The version the next write creates."""
    return max(model_versions(model_dir), default=0) + 1


def unknown_versions(model_dir: Path, keep: Collection[int]) -> list[int]:
    """Those of ``keep`` that are neither in the repository nor the version written next: a
    policy naming them would load nothing for them."""
    known = {*model_versions(model_dir), next_version(model_dir)}
    return sorted(set(keep) - known)


def loaded_versions(present: Collection[int], written: int, keep: Collection[int] | None) -> list[int]:
    """The versions Triton loads once ``written`` is: ``keep`` and the one written; without
    ``keep``, every version present."""
    return sorted({*(present if keep is None else keep), written})


def version_policy(keep: Collection[int] | None) -> str:
    """config.pbtxt's version_policy value: exactly the versions ``keep``; None: every version
    in the repository, also one added later (Triton's default loads only the latest: an
    experiment's control arm on the previous version would find it unavailable)."""
    if keep is None:
        return "{ all { } }"
    return "{ specific { versions: [" + ", ".join(str(v) for v in sorted(set(keep))) + "] } }"


def write_model_repository(
    arrays: Mapping[str, np.ndarray],
    repository: Path,
    model_name: str = "recommender",
    top_k: int = 10,
    history_length: int = 16,
    max_batch_size: int = 256,
    priority_levels: int = 0,
    keep_versions: Collection[int] | None = None,
) -> int:
    """Write the next version of the model (``arrays``: embeddings.npz, see scoring.py);
    returns the version number written.

    ``priority_levels`` > 0 gives Triton's queue that many levels (lanes' ``triton_priority``
    then orders requests inside Triton too); 0 leaves the queue plain (see config.pbtxt).
    ``keep_versions``: the versions Triton keeps loaded besides the one written (None: every
    version in the repository, see version_policy)."""
    model_dir = repository / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    version_dir = model_dir / str(version)
    version_dir.mkdir()
    for name, source in serving_code().items():
        shutil.copy(source, version_dir / name)
    np.savez(version_dir / "embeddings.npz", **arrays)  # type: ignore[arg-type]
    config = (TEMPLATE_DIR / "config.pbtxt").read_text()
    config = (
        config.replace("{{name}}", model_name)
        .replace("{{top_k}}", str(top_k))
        .replace("{{history_length}}", str(history_length))
        .replace("{{max_batch_size}}", str(max_batch_size))
        .replace("{{scheduling}}", scheduling_block(priority_levels))
        .replace(
            "{{version_policy}}",
            version_policy(None if keep_versions is None else {*keep_versions, version}),
        )
    )
    (model_dir / "config.pbtxt").write_text(config)
    return version
