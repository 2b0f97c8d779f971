"""Real TLS for the alert senders' tests: a CA of the test's own and a server
certificate for 127.0.0.1 and localhost (``Pki``), a client certificate from another CA
(``make_client_pki``: what a receiver requiring mutual TLS trusts), and a real HTTPS (or plain HTTP)
receiver on a free port of 127.0.0.1 that keeps every request and answers with the
statuses a test scripts (``Receiver``)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_client_pki(folder: Path, common_name: str) -> Pki:
    """A fresh CA (``ca_file``: what the receiver trusts) and a client certificate it
    issued (``clientAuth``), subject ``O=trustmesh tests, CN=common_name``; the key
    written 0600."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustmesh tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder / "client-ca.pem", folder / "client.pem", folder / "client.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.touch(mode=0o600)
    pki.key_file.write_bytes(_pem_key(key))
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
