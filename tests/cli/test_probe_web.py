"""`trustmesh status` probes a browser-facing listener (the console) over real TLS: against
the dev edge CA, or — with a certificate the declaration gives it, often a private CA's
and naming a host, not the loopback address the probe dials — pinned to exactly that
certificate: the same one is healthy, any other is not, whoever issued it."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustmesh.cli.health import probe_web


def _self_signed(folder: Path, name: str) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


class _SignIn(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/signin" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, bytes, bytes]]:
    """A TLS listener on 127.0.0.1 serving a certificate for console.shop.example; and
    the DER of that certificate and of another one."""
    cert, key, served = _self_signed(tmp_path, "console.shop.example")
    _, _, other = _self_signed(tmp_path, "other.shop.example")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SignIn)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", served, other
    finally:
        server.shutdown()
        server.server_close()


def test_the_declared_certificate_is_pinned(console: tuple[str, bytes, bytes]) -> None:
    url, served, other = console
    assert not probe_web(url, None, "/signin").ok  # no public CA issued it, nor for 127.0.0.1
    assert probe_web(url, None, "/signin", pinned=served).ok
    assert probe_web(url, None, "/signin", pinned=served).cert_expires is not None
    assert not probe_web(url, None, "/signin", pinned=other).ok  # another certificate
    assert not probe_web(url, None, "/missing", pinned=served).ok  # and the page must answer
