"""The SPIFFE X509-SVID rules (spiffe/standards X509-SVID.md), one test per rule, on
certificates made by the real recipes under a real root + intermediate."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh import crypto
from trustmesh.errors import CryptoError

TD = "example.org"
SPIFFE_ID = "spiffe://example.org/payments/api"
NOW = dt.datetime(2031, 3, 1, 12, 0, 0, tzinfo=dt.UTC)  # whole seconds: X.509 time precision
ROOT_TTL = dt.timedelta(days=365)
CA_TTL = dt.timedelta(days=7)
SVID_TTL = dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    root_issuer: crypto.Issuer
    intermediate: x509.Certificate
    issuer: crypto.Issuer


def make_pki(
    trust_domain: str = TD,
    *,
    now: dt.datetime = NOW,
    root_ttl: dt.timedelta = ROOT_TTL,
    ca_ttl: dt.timedelta = CA_TTL,
) -> Pki:
    root_key = crypto.generate_key()
    root = crypto.create_root_ca(trust_domain, root_key, now=now, ttl=root_ttl, label="1")
    root_issuer = crypto.Issuer(root, root_key)
    signing_key = crypto.generate_key()
    intermediate = crypto.create_intermediate_ca(
        trust_domain, signing_key.public_key(), root_issuer, now=now, ttl=ca_ttl, label="1.1"
    )
    return Pki(root, root_issuer, intermediate, crypto.Issuer(intermediate, signing_key))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def svid(pki: Pki) -> x509.Certificate:
    cert, _ = crypto.issue_x509_svid(SPIFFE_ID, pki.issuer, now=NOW, ttl=SVID_TTL)
    return cert


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def _forged_leaf(
    pki: Pki,
    uris: list[str],
    *,
    ca: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.Certificate:
    """A leaf that breaks one rule, signed by the real (trusted) signing CA key."""
    key = crypto.generate_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forged")]))
        .issuer_name(pki.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - crypto.BACKDATE)
        .not_valid_after(NOW + SVID_TTL)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.issuer.key.public_key()),
            critical=False,
        )
        .sign(pki.issuer.key, hashes.SHA256())
    )


# -- the leaf (X509-SVID §2, §3.1, §4) -------------------------------------------------------


def test_svid_has_exactly_one_uri_san_equal_to_the_spiffe_id(svid: x509.Certificate) -> None:
    san = _ext(svid, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_ID]
    assert crypto.uri_sans(svid) == [SPIFFE_ID]


def test_svid_carries_the_dns_name_of_its_spiffe_id(svid: x509.Certificate) -> None:
    """The one other SAN (§2 allows it): what a proxy that checks only host names checks."""
    san = _ext(svid, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [crypto.svid_dns_name(SPIFFE_ID)]
    assert crypto.leaf_spiffe_id(svid) == SPIFFE_ID


@pytest.mark.parametrize(
    ("spiffe_id", "name"),
    [
        ("spiffe://shop.example/orders", "orders.shop.example"),
        ("spiffe://shop.example/trustmesh/gateway", "gateway.trustmesh.shop.example"),
        ("spiffe://td/a-1/b2", "b2.a-1.td"),
        ("spiffe://shop.example/Orders", None),  # not a lower-case label
        ("spiffe://shop.example/orders.v2", None),  # a dot would make two labels
        ("spiffe://shop.example/-orders", None),
        ("spiffe://shop.example/a_b", None),
        ("spiffe://shop.example/" + "a" * 64, None),
        ("spiffe://shop.example/" + "/".join(["a" * 60] * 5), None),  # past 253
        ("spiffe://shop.example", None),
        ("https://shop.example/orders", None),
    ],
)
def test_svid_dns_name(spiffe_id: str, name: str | None) -> None:
    assert crypto.svid_dns_name(spiffe_id) == name


def test_svid_dns_names_differ_for_different_ids() -> None:
    """One-to-one within a trust domain: reversing the segments cannot make two IDs meet."""
    ids = [f"spiffe://td/{p}" for p in ("a/b", "b/a", "a", "b", "a/b/c", "c/b/a", "ab")]
    names = [crypto.svid_dns_name(i) for i in ids]
    assert None not in names
    assert len(set(names)) == len(ids)


def test_leaf_basic_constraints_ca_false_and_critical(svid: x509.Certificate) -> None:
    ext = _ext(svid, x509.BasicConstraints)
    assert ext.critical
    assert ext.value.ca is False
    assert ext.value.path_length is None


def test_leaf_key_usage_critical_digital_signature_never_cert_or_crl_sign(
    svid: x509.Certificate,
) -> None:
    ext = _ext(svid, x509.KeyUsage)
    assert ext.critical
    assert ext.value.digital_signature
    assert not ext.value.key_cert_sign
    assert not ext.value.crl_sign


def test_leaf_extended_key_usage_server_and_client_auth(svid: x509.Certificate) -> None:
    eku = _ext(svid, x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_serial_is_random_positive_and_at_most_20_bytes(pki: Pki) -> None:
    key = crypto.generate_key()  # same key, same ID, same time: only the serial may differ
    a, _ = crypto.issue_x509_svid(SPIFFE_ID, pki.issuer, now=NOW, ttl=SVID_TTL, key=key)
    b, _ = crypto.issue_x509_svid(SPIFFE_ID, pki.issuer, now=NOW, ttl=SVID_TTL, key=key)
    assert a.serial_number != b.serial_number
    for serial in (a.serial_number, b.serial_number):
        assert serial > 0
        # RFC 5280 §4.1.2.2: at most 20 octets as a (signed) DER INTEGER
        assert serial.bit_length() // 8 + 1 <= 20
        assert serial.bit_length() > 64  # CA/B BR §7.1: at least 64 bits of entropy


def test_not_after_is_now_plus_ttl(svid: x509.Certificate) -> None:
    assert svid.not_valid_after_utc == NOW + SVID_TTL


def test_not_after_is_clamped_to_the_issuers_not_after(pki: Pki) -> None:
    cert, _ = crypto.issue_x509_svid(SPIFFE_ID, pki.issuer, now=NOW, ttl=CA_TTL * 10)
    assert cert.not_valid_after_utc == pki.intermediate.not_valid_after_utc
    late = pki.intermediate.not_valid_after_utc - SVID_TTL / 2
    cert, _ = crypto.issue_x509_svid(SPIFFE_ID, pki.issuer, now=late, ttl=SVID_TTL)
    assert cert.not_valid_after_utc == pki.intermediate.not_valid_after_utc


def test_not_before_is_backdated_by_backdate_only(svid: x509.Certificate) -> None:
    assert dt.timedelta(0) < crypto.BACKDATE <= dt.timedelta(minutes=1)
    assert svid.not_valid_before_utc == NOW - crypto.BACKDATE


# -- the chain (X509-SVID §5) ------------------------------------------------------------------


def test_chain_verifies_against_its_root(pki: Pki, svid: x509.Certificate) -> None:
    assert crypto.verify_svid_chain([svid, pki.intermediate], [pki.root], now=NOW) == SPIFFE_ID
    # validity is inclusive at both ends (RFC 5280 §4.1.2.5)
    for at in (svid.not_valid_before_utc, svid.not_valid_after_utc):
        assert crypto.verify_svid_chain([svid, pki.intermediate], [pki.root], now=at) == SPIFFE_ID


def test_chain_fails_against_another_root_of_the_same_trust_domain(
    pki: Pki, svid: x509.Certificate
) -> None:
    other = make_pki(TD)
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([svid, pki.intermediate], [other.root], now=NOW)


def test_chain_fails_with_another_trust_domains_root(pki: Pki, svid: x509.Certificate) -> None:
    other = make_pki("other.example")
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([svid, pki.intermediate], [other.root], now=NOW)


def test_chain_fails_once_expired(pki: Pki, svid: x509.Certificate) -> None:
    with pytest.raises(CryptoError, match="not valid at validation time"):
        crypto.verify_svid_chain(
            [svid, pki.intermediate], [pki.root], now=svid.not_valid_after_utc + SECOND
        )


def test_chain_fails_before_not_before(pki: Pki, svid: x509.Certificate) -> None:
    with pytest.raises(CryptoError, match="not valid at validation time"):
        crypto.verify_svid_chain(
            [svid, pki.intermediate], [pki.root], now=svid.not_valid_before_utc - SECOND
        )


def test_chain_without_the_signing_ca_fails(pki: Pki, svid: x509.Certificate) -> None:
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([svid], [pki.root], now=NOW)


@pytest.mark.parametrize("chain_empty", [True, False])
def test_empty_chain_or_bundle_is_refused(
    pki: Pki, svid: x509.Certificate, chain_empty: bool
) -> None:
    chain = [] if chain_empty else [svid, pki.intermediate]
    roots = [pki.root] if chain_empty else []
    with pytest.raises(CryptoError, match="empty"):
        crypto.verify_svid_chain(chain, roots, now=NOW)


def test_an_svid_cannot_sign_another_svid(pki: Pki) -> None:
    """A workload holding a valid SVID key tries to mint an identity for another workload."""
    stolen_cert, stolen_key = crypto.issue_x509_svid(SPIFFE_ID, pki.issuer, now=NOW, ttl=SVID_TTL)
    forged, _ = crypto.issue_x509_svid(
        "spiffe://example.org/admin",
        crypto.Issuer(stolen_cert, stolen_key),
        now=NOW,
        ttl=SVID_TTL,
    )
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([forged, stolen_cert, pki.intermediate], [pki.root], now=NOW)


def test_validator_rejects_more_than_one_uri_san(pki: Pki) -> None:
    leaf = _forged_leaf(pki, ["spiffe://example.org/a", "spiffe://example.org/b"])
    with pytest.raises(CryptoError, match="exactly one URI SAN"):
        crypto.verify_svid_chain([leaf, pki.intermediate], [pki.root], now=NOW)


def test_validator_rejects_a_leaf_with_ca_true(pki: Pki) -> None:
    leaf = _forged_leaf(pki, [SPIFFE_ID], ca=True)
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([leaf, pki.intermediate], [pki.root], now=NOW)


def test_validator_rejects_a_leaf_with_key_cert_sign(pki: Pki) -> None:
    leaf = _forged_leaf(pki, [SPIFFE_ID], key_cert_sign=True)
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([leaf, pki.intermediate], [pki.root], now=NOW)


def test_validator_rejects_a_leaf_with_crl_sign(pki: Pki) -> None:
    leaf = _forged_leaf(pki, [SPIFFE_ID], crl_sign=True)
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([leaf, pki.intermediate], [pki.root], now=NOW)


def test_validator_rejects_a_uri_san_that_is_not_a_spiffe_id(pki: Pki) -> None:
    leaf = _forged_leaf(pki, ["https://example.org/payments/api"])
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([leaf, pki.intermediate], [pki.root], now=NOW)


def test_validator_rejects_a_leaf_naming_only_the_trust_domain(pki: Pki) -> None:
    leaf = _forged_leaf(pki, [f"spiffe://{TD}"])
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([leaf, pki.intermediate], [pki.root], now=NOW)


# -- the signing certificates (X509-SVID §3.2, §4) ---------------------------------------------


@pytest.mark.parametrize(("which", "path_length"), [("root", 1), ("intermediate", 0)])
def test_ca_certificates(pki: Pki, which: str, path_length: int) -> None:
    cert = pki.root if which == "root" else pki.intermediate
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    assert bc.value.path_length == path_length
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    uris = crypto.uri_sans(cert)
    assert uris == [f"spiffe://{TD}"]
    parsed = urllib.parse.urlsplit(uris[0])
    assert (parsed.scheme, parsed.netloc, parsed.path) == ("spiffe", TD, "")


def test_root_is_self_signed_and_signs_the_intermediate(pki: Pki) -> None:
    assert pki.root.subject == pki.root.issuer
    pki.root.verify_directly_issued_by(pki.root)
    pki.intermediate.verify_directly_issued_by(pki.root)


def test_intermediate_cannot_outlive_the_root() -> None:
    short = make_pki(root_ttl=dt.timedelta(days=1), ca_ttl=dt.timedelta(days=30))
    assert short.intermediate.not_valid_after_utc == short.root.not_valid_after_utc
    fits = make_pki(root_ttl=dt.timedelta(days=30), ca_ttl=dt.timedelta(days=1))
    assert fits.intermediate.not_valid_after_utc == NOW + dt.timedelta(days=1)


def test_the_intermediates_path_length_zero_is_enforced(pki: Pki) -> None:
    """A signing CA cannot create a further CA that issues verifiable SVIDs."""
    sub_key = crypto.generate_key()
    sub = crypto.create_intermediate_ca(
        TD, sub_key.public_key(), pki.issuer, now=NOW, ttl=CA_TTL, label="rogue"
    )
    leaf, _ = crypto.issue_x509_svid(SPIFFE_ID, crypto.Issuer(sub, sub_key), now=NOW, ttl=SVID_TTL)
    with pytest.raises(CryptoError):
        crypto.verify_svid_chain([leaf, sub, pki.intermediate], [pki.root], now=NOW)


# -- DER chains as the Workload API carries them ------------------------------------------------


def test_certs_der_round_trip(pki: Pki, svid: x509.Certificate) -> None:
    certs = [svid, pki.intermediate, pki.root]
    assert crypto.certs_from_der(crypto.certs_to_der(certs)) == certs
    assert crypto.certs_from_der(crypto.cert_der(svid)) == [svid]


def test_every_truncation_inside_a_certificate_is_refused(pki: Pki, svid: x509.Certificate) -> None:
    certs = [svid, pki.intermediate]
    data = crypto.certs_to_der(certs)
    boundaries = {0, len(crypto.cert_der(svid)), len(data)}
    for cut in range(1, len(data)):
        if cut in boundaries:
            continue
        with pytest.raises(CryptoError):
            crypto.certs_from_der(data[:cut])
    assert crypto.certs_from_der(data[: len(crypto.cert_der(svid))]) == [svid]


@pytest.mark.parametrize(
    "suffix", [b"\x00", b"\x30", b"\x30\x05", b"\x30\x84\xff\xff\xff\xff", b"\x30\x85\x00"]
)
def test_trailing_garbage_is_refused(svid: x509.Certificate, suffix: bytes) -> None:
    with pytest.raises(CryptoError):
        crypto.certs_from_der(crypto.cert_der(svid) + suffix)


def test_a_der_sequence_that_is_not_a_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="asn1"):
        crypto.certs_from_der(b"\x30\x03\x02\x01\x00")


_CERT_DER = crypto.cert_der(
    crypto.issue_x509_svid(SPIFFE_ID, make_pki().issuer, now=NOW, ttl=SVID_TTL)[0]
)


@st.composite
def _mangled_der(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real certificate truncated / bit-flipped / spliced."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(_CERT_DER)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@settings(max_examples=400, deadline=None)
@given(_mangled_der())
def test_certs_from_der_never_crashes_on_hostile_bytes(data: bytes) -> None:
    try:
        certs = crypto.certs_from_der(data)
    except (CryptoError, ValueError):
        return
    assert crypto.certs_to_der(certs) == data
