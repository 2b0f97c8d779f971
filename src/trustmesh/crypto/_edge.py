"""Web TLS for the edge: the certificates browsers and other non-SPIFFE clients see.

A browser cannot present an SVID, and an X.509-SVID (one URI SAN, no DNS name) is not a
web server certificate. So the listeners that face browsers — the identity provider's
login pages now, the gateway later — present an ordinary server certificate: in
production, the files an operator configures; in dev mode, one issued on each start by a
*local edge CA* that trustmesh creates once under the state directory (the mkcert
approach). The edge CA is separate from the SPIFFE CA: it can never mint a workload
identity, and trusting it in a browser trusts no workload.

Files (``<state>/edge/``): ``ca.pem`` (public: import it to trust the dev listeners),
``ca.key.sealed`` (the CA key, sealed like every key at rest). Leaf keys live only in
memory.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustmesh.crypto._seal import SealKey, load_or_create_sealed, open_sealed, seal
from trustmesh.crypto._x509 import (
    BACKDATE,
    PrivateKey,
    generate_key,
    key_usage,
    private_key_from_der,
    private_key_to_der,
)
from trustmesh.errors import CryptoError

EDGE_CA_TTL = dt.timedelta(days=365)
EDGE_LEAF_TTL = dt.timedelta(days=30)
_CONTEXT = b"trustmesh edge CA key v1"
#: What a dev listener's certificate names (the listeners bind loopback).
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
#: What a certificate signing request's key may be (:func:`csr_public_key`).
_CSR_CURVES = ("secp256r1", "secp384r1")
_CSR_MIN_RSA = 2048


@dataclass(frozen=True)
class ServerCertificate:
    """A web server certificate, its issuer's, and the key (in memory only)."""

    chain: tuple[x509.Certificate, ...]  # leaf first
    key: PrivateKeyTypes

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def create_edge_ca(
    key: PrivateKey, *, now: dt.datetime, ttl: dt.timedelta = EDGE_CA_TTL
) -> x509.Certificate:
    """A self-signed CA that signs only server certificates (path length 0)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, "trustmesh local edge CA"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_server_certificate(
    names: Sequence[str],
    ca: x509.Certificate,
    ca_key: PrivateKey,
    *,
    now: dt.datetime,
    ttl: dt.timedelta = EDGE_LEAF_TTL,
) -> ServerCertificate:
    """A TLS server certificate for ``names`` (DNS names or IP addresses), with a new key."""
    key = generate_key()
    cert = server_certificate_for(key.public_key(), names, ca, ca_key, now=now, ttl=ttl)
    return ServerCertificate((cert, ca), key)


def server_certificate_for(
    public: CertificateIssuerPublicKeyTypes,
    names: Sequence[str],
    ca: x509.Certificate,
    ca_key: PrivateKey,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
) -> x509.Certificate:
    """A TLS server certificate of ``public`` for ``names`` (DNS names or IP addresses):
    serverAuth only (it cannot authenticate a client), no URI SAN (it is no SVID: no
    workload accepts it as an identity), never outliving ``ca``."""
    if not names:
        raise CryptoError("a server certificate needs at least one name")
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + ttl, ca.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustmesh"),
                    x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def csr_public_key(pem: bytes) -> CertificateIssuerPublicKeyTypes:
    """The public key of a PEM certificate signing request whose signature proves its
    holder has the private key: ECDSA on P-256 or P-384, or RSA of 2048 bits or more.
    Nothing else of the request is taken (the issuer decides the names)."""
    try:
        csr = x509.load_pem_x509_csr(pem)
        signed = csr.is_signature_valid
        public = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CryptoError("not a PEM certificate signing request") from None
    if not signed:
        raise CryptoError("the certificate signing request's signature does not verify")
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in _CSR_CURVES:
        return public
    if isinstance(public, rsa.RSAPublicKey) and public.key_size >= _CSR_MIN_RSA:
        return public
    raise CryptoError("the request's key must be ECDSA P-256 or P-384, or RSA of 2048 bits or more")


def certificate_request(key: PrivateKey, name: str) -> bytes:
    """A PEM certificate signing request of ``key`` (subject CN ``name``)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def edge_ca_path(state: Path) -> Path:
    return state / "edge" / "ca.pem"


def local_server_certificate(
    state: Path,
    seal_key: SealKey,
    *,
    names: Sequence[str] = LOCAL_NAMES,
    now: dt.datetime | None = None,
) -> ServerCertificate:
    """Dev mode: a fresh server certificate from the local edge CA, creating the CA on
    first use (under a lock: several components may start at once). A CA that is expired
    or about to expire (within a leaf's lifetime) is replaced."""
    now = now or dt.datetime.now(dt.UTC)
    folder = state / "edge"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        ca, ca_key = _load_ca(folder, seal_key, now) or _create_ca(folder, seal_key, now)
    finally:
        os.close(lock_fd)  # releases the lock
    return issue_server_certificate(names, ca, ca_key, now=now)


def _load_ca(
    folder: Path, seal_key: SealKey, now: dt.datetime
) -> tuple[x509.Certificate, PrivateKey] | None:
    cert_file, key_file = folder / "ca.pem", folder / "ca.key.sealed"
    if not (cert_file.exists() and key_file.exists()):
        return None
    ca = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = private_key_from_der(open_sealed(key_file.read_bytes(), seal_key, context=_CONTEXT))
    if key.public_key() != ca.public_key():
        raise CryptoError(f"{cert_file} does not belong to the sealed edge CA key")
    if ca.not_valid_after_utc - now < EDGE_LEAF_TTL:
        return None  # renew ahead of expiry
    return ca, key


def _create_ca(
    folder: Path, seal_key: SealKey, now: dt.datetime
) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key()
    ca = create_edge_ca(key, now=now)
    sealed = seal(private_key_to_der(key), seal_key, context=_CONTEXT)
    replace_file(folder / "ca.key.sealed", sealed, 0o600)
    replace_file(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca, key


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, made with ``mode`` and
    fsynced, renamed over it; a symlink is never followed): keys and certificates."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_server_certificate(cert_file: Path, key_file: Path) -> ServerCertificate:
    """Production: the operator's certificate chain and key (PEM files)."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_file.read_bytes()))
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CryptoError(f"cannot load the server certificate: {exc}") from None
    if not chain:
        raise CryptoError(f"{cert_file} holds no certificate")
    if chain[0].public_key() != key.public_key():
        raise CryptoError(f"{key_file} is not the key of the first certificate in {cert_file}")
    return ServerCertificate(chain, key)


def server_certificate(
    state: Path,
    seal_key: SealKey,
    files: tuple[Path, Path] | None,
    *,
    dev: bool,
) -> ServerCertificate | None:
    """A web listener's certificate: the operator's ``(cert, key)`` files when given;
    in dev mode, a fresh one from the local edge CA; else None (the caller says which
    setting is missing)."""
    if files is not None:
        return load_server_certificate(*files)
    return local_server_certificate(state, seal_key) if dev else None


def load_or_create_sealed_key(path: Path, seal_key: SealKey, *, context: bytes) -> PrivateKey:
    """An EC private key kept sealed (bound to ``context``) in ``path``: read, or made and
    written 0600 on first use (if another process wins that race, its key is read)."""
    der = load_or_create_sealed(
        path, seal_key, context=context, make=lambda: private_key_to_der(generate_key())
    )
    return private_key_from_der(der)
