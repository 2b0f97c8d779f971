"""Detached Ed25519 signatures: RFC 8032 §7.1's vectors (djb's sign.input from the
cryptography-vectors package, whose first lines are the RFC's TEST 1–3), forgeries
refused, the key id, and the key kept sealed at rest."""

from __future__ import annotations

import stat
from pathlib import Path

import cryptography_vectors
import pytest

from trustmesh import crypto
from trustmesh.errors import CryptoError, SealError

VECTORS = Path(cryptography_vectors.__file__).parent / "asymmetric" / "Ed25519" / "sign.input"
CONTEXT = b"trustmesh/audit/checkpoint-key"


def _vectors() -> list[tuple[bytes, bytes, bytes, bytes]]:
    """(seed, public key, message, signature) per line: ``sk||pk:pk:msg:sig||msg``."""
    cases = []
    for line in VECTORS.read_text().splitlines():
        secret, public, message, signed, _ = line.split(":")
        seed, pk, msg = bytes.fromhex(secret)[:32], bytes.fromhex(public), bytes.fromhex(message)
        sig = bytes.fromhex(signed)[:64]
        assert bytes.fromhex(signed)[64:] == msg
        cases.append((seed, pk, msg, sig))
    return cases


def test_the_vectors_start_with_rfc_8032_test_1_to_3() -> None:
    cases = _vectors()
    assert len(cases) == 1024
    # RFC 8032 §7.1, TEST 1 (empty message), TEST 2 (0x72), TEST 3 (0xaf82)
    test_1 = cases[0]
    assert test_1[0].hex() == "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    assert test_1[1].hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert test_1[2] == b""
    assert test_1[3].hex().startswith("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065")
    assert cases[1][2] == bytes.fromhex("72")
    assert cases[2][2] == bytes.fromhex("af82")


def test_every_vector_signs_and_verifies() -> None:
    for seed, public, message, signature in _vectors():
        key = crypto.signing_key_from_seed(seed)
        assert crypto.signing_public_key(key) == public
        assert crypto.sign_detached(key, message) == signature
        assert crypto.verify_detached(public, message, signature) is True


@pytest.mark.parametrize("case", range(0, 1024, 97))
def test_a_changed_message_signature_or_key_is_refused(case: int) -> None:
    _seed, public, message, signature = _vectors()[case]
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert crypto.verify_detached(public, message, flipped) is False
    assert crypto.verify_detached(public, message + b"\x00", signature) is False
    assert crypto.verify_detached(public, message, signature[:-1]) is False
    assert crypto.verify_detached(public, message, signature + b"\x00") is False
    assert crypto.verify_detached(public, message, b"") is False
    other = crypto.signing_public_key(crypto.generate_signing_key())
    assert crypto.verify_detached(other, message, signature) is False


def test_a_fresh_key_signs_what_its_public_key_verifies() -> None:
    key = crypto.generate_signing_key()
    public = crypto.signing_public_key(key)
    signature = crypto.sign_detached(key, b"checkpoint")
    assert len(public) == 32
    assert len(signature) == 64
    assert crypto.verify_detached(public, b"checkpoint", signature)
    assert crypto.generate_signing_key() != key


def test_a_public_key_of_the_wrong_size_is_the_callers_error() -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        crypto.verify_detached(b"\x01" * 31, b"m", b"\x00" * 64)
    with pytest.raises(CryptoError, match="32 bytes"):
        crypto.signing_key_id(b"")
    with pytest.raises(CryptoError, match="seed is 32 bytes"):
        crypto.signing_key_from_seed(b"\x00" * 33)


def test_the_key_id_is_the_rfc_8037_thumbprint() -> None:
    # RFC 8037 Appendix A.3: the JWK thumbprint of the Appendix A.2 public key
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert crypto.signing_key_id(public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_the_key_is_sealed_at_rest_and_read_back(tmp_path: Path) -> None:
    seal_key = crypto.SealKey.generate()
    path = tmp_path / "audit" / "checkpoint.key.sealed"
    key = crypto.load_or_create_signing_key(path, seal_key, context=CONTEXT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.is_sealed(path.read_bytes())
    assert key.private_bytes_raw() not in path.read_bytes()
    again = crypto.load_or_create_signing_key(path, seal_key, context=CONTEXT)
    assert crypto.signing_public_key(again) == crypto.signing_public_key(key)
    with pytest.raises(SealError):
        crypto.load_or_create_signing_key(path, seal_key, context=b"another purpose")
    with pytest.raises(SealError):
        crypto.load_or_create_signing_key(path, crypto.SealKey.generate(), context=CONTEXT)
