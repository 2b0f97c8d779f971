"""mTLS with SPIFFE: SSL contexts from an X.509-SVID, rotated without a restart.

Keys never touch the disk: certificate chain and key are handed to OpenSSL through an
anonymous memory file (``memfd_create``). Hostname checks are off and the SPIFFE ID is
checked instead (X509-SVID §5: the peer's identity is its URI SAN, not a DNS name).

Rotation: ``load_cert_chain`` on a live context only changes what *new* handshakes
present, and ``load_verify_locations`` can only add CAs; so every rotation builds fresh
contexts, and the listening context's ``sni_callback`` (called on every handshake, with
or without SNI) switches each new connection to the newest one. Open connections keep
the context they were made with.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
from typing import Any

from cryptography import x509

from trustmesh import crypto
from trustmesh.errors import AuthenticationError, CryptoError
from trustmesh.reasons import Reason
from trustmesh.sdk.x509source import SVIDSource, X509Context


def _load_identity(ctx: ssl.SSLContext, x: X509Context) -> None:
    _load_svid(ctx, x)
    ctx.load_verify_locations(cadata=x.bundle_pem().decode("ascii"))


def _load_svid(ctx: ssl.SSLContext, x: X509Context) -> None:
    fd = os.memfd_create("trustmesh-svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, x.chain_pem() + crypto.private_key_to_pem(x.key))
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def web_server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Server-authenticated TLS for clients without an SVID (browsers): an ordinary web
    server certificate, no client certificate asked for. The key goes through memory only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    fd = os.memfd_create("trustmesh-web-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, chain_pem + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def server_context(x: X509Context, *, required: bool = True) -> ssl.SSLContext:
    """mTLS: a client certificate chaining to the bundle, required at the handshake
    (``required=False`` only under the test switch ``service-mtls``: asked for, and
    verified when one is shown, but a client may show none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _load_identity(ctx, x)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_context(x: X509Context) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the SPIFFE ID is checked instead (see peer_spiffe_id)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_identity(ctx, x)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def store_client_context(
    x: X509Context | None, *, trust_pem: bytes | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    """TLS to a server that is not a workload (a database, a cache): its certificate
    must chain to ``trust_pem`` (by default the bundle of ``x``: a server certificate
    from the workload CA) and, with ``check_hostname``, name the host dialled; ``x``'s
    SVID is the client certificate, where there is one."""
    trust = trust_pem if trust_pem is not None else (x.bundle_pem() if x is not None else None)
    if trust is None:
        raise CryptoError("no trust bundle to check the server's certificate against")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trust.decode("ascii"))
    if x is not None:
        _load_svid(ctx, x)
    return ctx


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> x509.Certificate:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise AuthenticationError(
            "the peer presented no certificate", reason=Reason.PEER_CERTIFICATE_MISSING
        )
    return x509.load_der_x509_certificate(der)


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket, trust_domain: str) -> str:
    """The SPIFFE ID of a verified peer (OpenSSL already checked the chain against the
    bundle); the leaf must follow the X509-SVID rules and belong to ``trust_domain``."""
    try:
        return crypto.leaf_spiffe_id(peer_certificate(ssl_object), trust_domain=trust_domain)
    except CryptoError as exc:
        raise AuthenticationError(exc.detail, reason=Reason.PEER_SVID_INVALID) from None


def _thumbprint(cert: Any) -> str:
    """``x5t#S256`` (RFC 8705 §3.1): base64url SHA-256 of the DER certificate."""
    digest = hashlib.sha256(crypto.cert_der(cert)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class RotatingTLS:
    """Server and client contexts that follow an SVID source (the Workload API's stream)."""

    def __init__(self, source: SVIDSource, *, require_client_certificate: bool = True) -> None:
        """``require_client_certificate`` False only under the test switch
        ``service-mtls`` (:mod:`trustmesh.config.switches`)."""
        self.source = source
        first = source.context
        self.trust_domain = first.trust_domain
        self._required = require_client_certificate
        self._server = server_context(first, required=self._required)
        self._client = client_context(first)
        #: The context a server listens with: it hands every handshake to the newest one.
        self.listening = server_context(first, required=self._required)
        self.listening.sni_callback = self._switch
        #: Moves on at every rotation: clients pool connections per generation, and
        #: tokens bound to the previous certificate are dropped.
        self.generation = 0
        self.thumbprint = _thumbprint(first.chain[0])
        source.subscribe(self._rotate)

    def _rotate(self, x: X509Context) -> None:
        self._server = server_context(x, required=self._required)
        self._client = client_context(x)
        self.trust_domain = x.trust_domain
        self.thumbprint = _thumbprint(x.chain[0])
        self.generation += 1

    def _switch(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        ssl_object.context = self._server

    @property
    def client(self) -> ssl.SSLContext:
        """The context for new outgoing connections (pooled ones keep theirs)."""
        return self._client

    def tls_extension(self, ssl_object: ssl.SSLObject) -> dict[str, Any]:
        """The ASGI TLS extension (``scope["extensions"]["tls"]``), plus ``spiffe_id``."""
        cert = peer_certificate(ssl_object)
        cipher = ssl_object.cipher()
        version = ssl_object.version()
        return {
            "server_cert": None,
            "client_cert_chain": [crypto.cert_pem(cert)],
            "client_cert_name": cert.subject.rfc4514_string(),
            "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(version or ""),
            "cipher_suite": None,
            "cipher": cipher[0] if cipher else None,
            "spiffe_id": peer_spiffe_id(ssl_object, self.trust_domain),
            # RFC 8705 §3.1 x5t#S256 of the leaf: what certificate-bound tokens name
            "client_cert_x5t_s256": _thumbprint(cert),
        }


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
