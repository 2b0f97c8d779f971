"""Real TLS for the alert senders' tests: a CA of the test's own and a server
certificate for 127.0.0.1 and localhost (``Pki``), and a real HTTPS (or plain HTTP)
receiver on a free port of 127.0.0.1 that keeps every request and answers with the
statuses a test scripts (``Receiver``)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from trustmesh import crypto


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the CA a client trusts
    cert_file: Path  # the server's chain
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_pki(folder: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pki:
    """A fresh CA and a server certificate it issued for ``names``, as PEM files."""
    now = datetime.now(UTC)
    ca_key = crypto.generate_key()
    ca = crypto.create_edge_ca(ca_key, now=now)
    issued = crypto.issue_server_certificate(list(names), ca, ca_key, now=now)
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_file.write_text(crypto.cert_pem(ca))
    pki.cert_file.write_bytes(issued.chain_pem())
    pki.key_file.write_bytes(issued.key_pem())
    return pki


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Every request received (``requests``); ``statuses``: what to answer, in order
    (then 200 for ever)."""

    server: http.server.ThreadingHTTPServer
    requests: list[Request] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)


def receiver(pki: Pki | None, statuses: list[int] | None = None) -> Iterator[Receiver]:
    """A receiver (HTTPS with ``pki``, else plain HTTP) for the length of a fixture."""
    box: list[Receiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the answer is two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(size)
            rig = box[0]
            with rig.arrived:
                status = rig.statuses.pop(0) if rig.statuses else 200
                rig.requests.append(Request(self.path, dict(self.headers.items()), body))
                rig.arrived.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if pki is not None:
        server.socket = pki.server_context().wrap_socket(server.socket, server_side=True)
    rig = Receiver(server, statuses=list(statuses or []))
    box.append(rig)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rig
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
