"""The embedded Triton Inference Server: the real 2.51 binary inside the nvidia-pytriton wheel,
CPU only, serving a model repository with the Python backend."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

from pipeline.devstack.process import ChildProcess, free_port


def _pytriton_site() -> Path:
    try:
        import pytriton  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the embedded Triton needs: pip install '.[embedded]'") from exc
    return Path(pytriton.__file__).resolve().parent.parent


def prepare_server_dir(workdir: Path) -> Path:
    """A writable copy of the server with the Python-backend stub of this interpreter."""
    site = _pytriton_site()
    target = workdir / "tritonserver"
    if not (target / "bin" / "tritonserver").exists():
        shutil.copytree(site / "pytriton" / "tritonserver", target, dirs_exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = target / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy(stub, target / "backends" / "python" / "triton_python_backend_stub")
    return target


# The model's matrix products are small: one BLAS thread per model instance is enough, and
# OpenBLAS's idle threads spin on cores the broker and the pipeline share (measured:
# docs/design.md, "One BLAS thread"). Scale with instance_group count, not BLAS threads.
SINGLE_THREADED_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class EmbeddedTriton(ChildProcess):
    def __init__(self, workdir: Path, model_repository: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        server = prepare_server_dir(workdir)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(_pytriton_site() / "nvidia_pytriton.libs")
        # The backend stub takes its sys.path from the first python3 on PATH: ours.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(SINGLE_THREADED_BLAS)
        super().__init__(
            "triton",
            [
                str(server / "bin" / "tritonserver"),
                f"--model-repository={model_repository}",
                f"--backend-directory={server / 'backends'}",
                f"--grpc-port={self.grpc_port}",
                f"--http-port={self.http_port}",
                f"--metrics-port={self.metrics_port}",
                "--log-verbose=0",
                *extra_args,
            ],
            workdir / "triton.log",
            env=env,
        )

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False
