"""The embedded stack's model repository outlives releases: a version trained earlier is
served with this release's model.py and scoring.py, and the model process keeps its batch
arrays in the heap (no page faults per execute())."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.devstack.stack import refresh_serving_code
from pipeline.recsys.repository import serving_code


def test_a_version_written_by_an_earlier_release_gets_this_releases_code(tmp_path: Path) -> None:
    model_dir = tmp_path / "recommender"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text('"""Triton Python-backend recommender: an older one"""\n')
    (model_dir / "1" / "embeddings.npz").write_bytes(b"arrays")
    (model_dir / "config.pbtxt").write_text("name: 'recommender'\n")
    refresh_serving_code(model_dir)
    for name, source in serving_code().items():
        assert (model_dir / "1" / name).read_bytes() == source.read_bytes()
    assert (model_dir / "1" / "embeddings.npz").read_bytes() == b"arrays"  # the arrays stay


def test_a_model_of_ones_own_is_left_alone(tmp_path: Path) -> None:
    version_dir = tmp_path / "recommender" / "3"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text("# my own recommender\n")
    refresh_serving_code(version_dir.parent)
    assert (version_dir / "model.py").read_text() == "# my own recommender\n"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.py"]


FAULTS_OF_FOUR_BATCHES = """
import importlib.util, resource, sys, types
import numpy as np
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("model", sys.argv[1] + "/model.py")
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)
if sys.argv[2] == "keep":
    assert model.keep_freed_memory()
def batch(rows):
    scores = np.ones((rows, 5000), dtype=np.float32)
    return np.argpartition(-scores, 9, axis=1)[:, :10].copy()
batch(256)  # the first (largest) batch: the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for rows in (200, 244, 180, 256):  # batch sizes vary, as the pipeline sends them
    batch(rows)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_model_process_keeps_its_batch_arrays_in_the_heap(tmp_path: Path) -> None:
    try:
        assert callable(ctypes.CDLL(None).mallopt)
    except (OSError, AttributeError):
        pytest.skip("not glibc: the model leaves the allocator as it is")
    version_dir = tmp_path / "recommender" / "1"
    version_dir.mkdir(parents=True)
    for name, source in serving_code().items():
        shutil.copy(source, version_dir / name)

    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", FAULTS_OF_FOUR_BATCHES, str(version_dir), mode],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 1000  # glibc's defaults: the arrays are mapped (and faulted in) anew
    assert kept < 100, f"{kept} page faults for four batches with the thresholds set"
