"""X.509 recipes: the workload CA (root + intermediate) and X.509-SVIDs.

SVIDs follow the SPIFFE X509-SVID standard (spiffe/standards X509-SVID.md):
exactly one URI SAN holding the SPIFFE ID (§2), leaf ``CA=false`` (§4.1), key usage
``digitalSignature`` and never ``keyCertSign``/``cRLSign`` on a leaf (§4.3), signing
certificates with ``CA=true`` and ``keyCertSign`` (§4.1, §4.3) carrying the trust domain's
SPIFFE ID (§3). Besides the URI SAN, an SVID carries one DNS SAN derived from its SPIFFE ID
(:func:`svid_dns_name`; §2 allows other SAN types), so that a proxy that can check only
a host name (nginx's ``proxy_ssl_name``, HAProxy's ``verifyhost``) still checks which
workload answers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustmesh.errors import CryptoError

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

#: A leaf's notBefore is set this far in the past, to absorb small clock skew between hosts.
BACKDATE = dt.timedelta(seconds=10)


@dataclass(frozen=True, repr=False)
class Issuer:
    """A signing certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def __repr__(self) -> str:
        return f"Issuer(subject={self.cert.subject.rfc4514_string()!r})"


def generate_key() -> PrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_to_der(key: PrivateKey) -> bytes:
    """PKCS#8 DER, unencrypted: for the Workload API, or to seal at rest."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: only ever written to memory (see sdk.tls)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_der(der: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("expected an EC private key")
    return key


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def certs_to_der(certs: Iterable[x509.Certificate]) -> bytes:
    """ASN.1 DER certificates concatenated, as the Workload API carries them."""
    return b"".join(cert_der(c) for c in certs)


def certs_from_der(data: bytes) -> list[x509.Certificate]:
    """Split concatenated DER certificates (each a SEQUENCE with a definite length)."""
    if not data:
        raise CryptoError("no certificate")
    certs: list[x509.Certificate] = []
    offset = 0
    while offset < len(data):
        end = offset + _der_length(data, offset)
        if end > len(data):
            raise CryptoError("truncated DER certificate")
        certs.append(x509.load_der_x509_certificate(data[offset:end]))
        offset = end
    return certs


def _der_length(data: bytes, offset: int) -> int:
    if data[offset] != 0x30 or offset + 2 > len(data):
        raise CryptoError("not a DER SEQUENCE")
    first = data[offset + 1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or offset + 2 + n > len(data):
        raise CryptoError("unsupported DER length")
    return 2 + n + int.from_bytes(data[offset + 2 : offset + 2 + n], "big")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert_der(cert)).hexdigest()


def _name(trust_domain: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustmesh"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    """KeyUsage with only these bits: a leaf signs (digitalSignature), a CA signs
    certificates and CRLs (keyCertSign, cRLSign)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_builder(
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: PublicKey,
    trust_domain: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_root_ca(
    trust_domain: str, key: PrivateKey, *, now: dt.datetime, ttl: dt.timedelta, label: str
) -> x509.Certificate:
    """A self-signed root for the trust domain; it signs only intermediates."""
    name = _name(trust_domain, f"trustmesh root CA {label}")
    builder = _ca_builder(
        name,
        name,
        key.public_key(),
        trust_domain,
        not_before=now - BACKDATE,
        not_after=now + ttl,
        path_length=1,
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
    )
    return builder.sign(key, hashes.SHA256())


def create_intermediate_ca(
    trust_domain: str,
    public_key: PublicKey,
    root: Issuer,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    label: str,
) -> x509.Certificate:
    """A signing CA under ``root`` (path length 0: it signs only leaves)."""
    not_after = min(now + ttl, root.cert.not_valid_after_utc)
    builder = _ca_builder(
        _name(trust_domain, f"trustmesh signing CA {label}"),
        root.cert.subject,
        public_key,
        trust_domain,
        not_before=now - BACKDATE,
        not_after=not_after,
        path_length=0,
    )
    builder = builder.add_extension(_aki(root.cert), critical=False)
    return builder.sign(root.key, hashes.SHA256())


# What every X.509-SVID holds, built once (issuance is the Workload API's hot path).
_SVID_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustmesh")])
_SVID_EXTENSIONS: tuple[tuple[x509.ExtensionType, bool], ...] = (  # (value, critical)
    (x509.BasicConstraints(ca=False, path_length=None), True),
    (key_usage(digital_signature=True), True),
    (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        False,
    ),
)


@lru_cache(maxsize=16)
def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def svid_dns_name(spiffe_id: str) -> str | None:
    """The DNS name an SVID of ``spiffe_id`` carries: its path's segments in reverse order,
    then the trust domain (``spiffe://shop.example/trustmesh/gateway`` →
    ``gateway.trustmesh.shop.example``); None where a segment or the trust domain is not
    made of DNS labels (lower-case letters, digits, inner hyphens) or the name would be
    longer than 253 characters. One-to-one within a trust domain: a label holds no dot."""
    prefix = "spiffe://"
    if not spiffe_id.startswith(prefix):
        return None
    td, _, path = spiffe_id[len(prefix) :].partition("/")
    segments = path.split("/")
    labels = [*reversed(segments), *td.split(".")]
    if not path or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return None
    name = ".".join(labels)
    return name if len(name) <= 253 else None


def issue_x509_svid(
    spiffe_id: str,
    issuer: Issuer,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue an X.509-SVID: one URI SAN (and the DNS SAN of :func:`svid_dns_name`, where
    the SPIFFE ID has one), CA=false, digitalSignature, random serial.

    The certificate never outlives its issuer: notAfter is clamped to the issuer's.
    """
    if not issuer.cert.not_valid_before_utc <= now < issuer.cert.not_valid_after_utc:
        raise CryptoError("the signing CA is not valid at this time")
    key = key or generate_key()
    not_after = min(now + ttl, issuer.cert.not_valid_after_utc)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_SVID_SUBJECT)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
    )
    for value, critical in _SVID_EXTENSIONS:
        builder = builder.add_extension(value, critical=critical)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    dns_name = svid_dns_name(spiffe_id)
    if dns_name is not None:
        names.append(x509.DNSName(dns_name))
    cert = (
        builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(issuer.cert), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return cert, key


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def verify_svid_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
    trust_domain: str | None = None,
) -> str:
    """Verify ``chain`` (leaf first) up to one of ``roots`` and return its SPIFFE ID.

    Raises CryptoError when the chain does not verify.
    """
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    if not chain or not roots:
        raise CryptoError("empty chain or bundle")
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
    try:
        verified = verifier.verify(chain[0], list(chain[1:]))
    except VerificationError as exc:
        raise CryptoError(f"chain does not verify: {exc}") from None
    del verified  # the path is valid; the SPIFFE rules on the leaf follow
    return leaf_spiffe_id(chain[0], trust_domain=trust_domain)


def leaf_spiffe_id(leaf: x509.Certificate, *, trust_domain: str | None = None) -> str:
    """The SPIFFE ID of an X.509-SVID leaf, checked against X509-SVID §5.2: exactly one URI
    SAN, a SPIFFE ID with a path (in ``trust_domain`` if given), on a non-CA leaf with
    digitalSignature that may not sign certificates or CRLs. Raises CryptoError."""
    ids = uri_sans(leaf)
    if len(ids) != 1:
        raise CryptoError("an SVID must carry exactly one URI SAN")
    spiffe_id = ids[0]
    prefix = "spiffe://"
    td, _, path = spiffe_id[len(prefix) :].partition("/")
    if not spiffe_id.startswith(prefix) or not td or not path:
        raise CryptoError("the URI SAN is not a workload SPIFFE ID")
    if trust_domain is not None and td != trust_domain:
        raise CryptoError(f"SVID of trust domain {td!r}, expected {trust_domain!r}")
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise CryptoError("an SVID needs basic constraints and key usage") from None
    if constraints.ca or usage.key_cert_sign or usage.crl_sign or not usage.digital_signature:
        raise CryptoError("an SVID leaf must be CA=false, digitalSignature, no cert/CRL signing")
    return spiffe_id
