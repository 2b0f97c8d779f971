"""Web TLS for the edge: the local dev CA (created once, sealed, renewed before it
expires) and the server certificates it issues; an operator's own certificate files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustmesh import crypto
from trustmesh.errors import CryptoError

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def seal_key(tmp_path: Path) -> crypto.SealKey:
    return crypto.load_seal_key(tmp_path, dev=True)


def test_a_dev_certificate_names_loopback_and_chains_to_the_kept_ca(
    tmp_path: Path, seal_key: crypto.SealKey
) -> None:
    first = crypto.local_server_certificate(tmp_path, seal_key, now=NOW)
    leaf, ca = first.chain
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_constraints.ca
    assert ca_constraints.path_length == 0
    leaf.verify_directly_issued_by(ca)
    stored = x509.load_pem_x509_certificate(crypto.edge_ca_path(tmp_path).read_bytes())
    assert stored == ca
    # the next start: the same CA, a new leaf and key
    second = crypto.local_server_certificate(tmp_path, seal_key, now=NOW + dt.timedelta(days=1))
    assert second.chain[1] == ca
    assert second.chain[0].serial_number != leaf.serial_number
    sealed = (tmp_path / "edge" / "ca.key.sealed").read_bytes()
    assert crypto.is_sealed(sealed)
    assert b"PRIVATE KEY" not in sealed


def test_the_ca_is_replaced_before_it_expires(tmp_path: Path, seal_key: crypto.SealKey) -> None:
    old = crypto.local_server_certificate(tmp_path, seal_key, now=NOW).chain[1]
    late = NOW + crypto.EDGE_CA_TTL - dt.timedelta(days=1)
    renewed = crypto.local_server_certificate(tmp_path, seal_key, now=late)
    assert renewed.chain[1] != old
    assert renewed.chain[0].not_valid_after_utc <= renewed.chain[1].not_valid_after_utc


def test_the_ca_key_opens_only_with_its_seal_key(tmp_path: Path, seal_key: crypto.SealKey) -> None:
    crypto.local_server_certificate(tmp_path, seal_key, now=NOW)
    other = crypto.load_seal_key(tmp_path / "elsewhere", dev=True)
    with pytest.raises(CryptoError):
        crypto.local_server_certificate(tmp_path, other, now=NOW)


def test_an_operators_certificate_files_are_checked(tmp_path: Path) -> None:
    ca_key = crypto.generate_key()
    ca = crypto.create_edge_ca(ca_key, now=NOW)
    issued = crypto.issue_server_certificate(["shop.example"], ca, ca_key, now=NOW)
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_file.write_bytes(issued.chain_pem())
    key_file.write_bytes(issued.key_pem())
    loaded = crypto.load_server_certificate(cert_file, key_file)
    assert loaded.chain == issued.chain
    # a key that is not the certificate's
    key_file.write_bytes(
        crypto.generate_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CryptoError, match="not the key"):
        crypto.load_server_certificate(cert_file, key_file)
    with pytest.raises(CryptoError, match="cannot load"):
        crypto.load_server_certificate(tmp_path / "missing.pem", key_file)
    with pytest.raises(CryptoError):
        crypto.issue_server_certificate([], ca, ca_key, now=NOW)
