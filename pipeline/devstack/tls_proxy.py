"""A TLS terminator in front of the embedded broker, for tests of Kafka over TLS.

Tansu 0.6 serves plaintext only: its ``--cert`` and ``--key`` are mutually exclusive flags,
and the TLS acceptor it builds from them is never used (tansu-broker/src/broker.rs,
``let _acceptor = ...``). So the broker listens in plaintext on one port, advertises this
proxy's port, and the proxy accepts TLS (optionally demanding a client certificate) and
forwards the bytes. Run as ``python -m pipeline.devstack.tls_proxy`` (``TlsProxy`` starts it
as a child process, stopped by PID)."""

from __future__ import annotations

import argparse
import select
import socket
import socketserver
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.devstack.process import ChildProcess, free_port, port_open

CHUNK = 256 * 1024


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:  # mutual TLS: a client certificate signed by this authority
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _pump(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Bytes both ways until either side closes."""
    peers = {tls: upstream, upstream: tls}
    while True:
        ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], 1.0)[0]
        for source in ready:
            data = source.recv(CHUNK)
            if not data:
                return
            peers[source].sendall(data)


class _Connection(socketserver.BaseRequestHandler):
    server: Proxy

    def handle(self) -> None:
        # Blocking sockets on purpose: a refused handshake then sends its alert (asyncio's
        # TLS server drops the connection without it, so a client could not tell why).
        try:
            tls = self.server.context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            print(f"tls-proxy: handshake with {self.client_address[0]} failed: {exc}", flush=True)
            return
        try:
            with tls, socket.create_connection(self.server.upstream, timeout=10) as upstream:
                upstream.settimeout(None)
                _pump(tls, upstream)
        except (ssl.SSLError, OSError):
            pass


class Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.context = context
        super().__init__(("127.0.0.1", port), _Connection)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tls_proxy", description="TLS terminator for the embedded broker")
    parser.add_argument("--listen", type=int, required=True, help="TLS port on 127.0.0.1")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the plaintext broker")
    parser.add_argument("--cert", type=Path, required=True, help="PEM server certificate")
    parser.add_argument("--key", type=Path, required=True, help="PEM key of --cert")
    parser.add_argument("--client-ca", type=Path, help="demand client certificates signed by this CA")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    with Proxy(args.listen, (host, int(port)), server_context(args.cert, args.key, args.client_ca)) as proxy:
        print(f"tls-proxy: TLS on 127.0.0.1:{args.listen} -> {args.upstream}", flush=True)
        proxy.serve_forever()  # until SIGTERM (ChildProcess.stop, by PID)


class TlsProxy(ChildProcess):
    """The terminator as a child process: TLS on ``port``, plaintext to ``upstream``."""

    def __init__(
        self,
        workdir: Path,
        upstream: str,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "pipeline.devstack.tls_proxy",
            "--listen",
            str(self.port),
            "--upstream",
            upstream,
            "--cert",
            str(cert),
            "--key",
            str(key),
        ]
        if client_ca is not None:
            argv += ["--client-ca", str(client_ca)]
        super().__init__("tls-proxy", argv, workdir / "tls-proxy.log", cwd=workdir)

    def listening(self) -> bool:
        return port_open(self.port)


if __name__ == "__main__":
    main()
