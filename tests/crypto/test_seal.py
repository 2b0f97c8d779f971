"""Sealing keys at rest (AES-256-GCM) and where the sealing key comes from."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from trustmesh import crypto
from trustmesh.crypto import SEAL_KEY_ENV, SEAL_PASSPHRASE_ENV, SealKey
from trustmesh.errors import KeySourceError, SealError

CONTEXT = b"trustmesh/identity/example.org/1/root-key"
SECRET = b"-- a private key, say --"
PASSPHRASE = "correct horse battery staple"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key() -> SealKey:
    return SealKey.generate()


# -- seal / open ----------------------------------------------------------------------------


def test_round_trip(key: SealKey) -> None:
    blob = crypto.seal(SECRET, key, context=CONTEXT)
    assert SECRET not in blob
    assert crypto.is_sealed(blob)
    assert crypto.open_sealed(blob, key, context=CONTEXT) == SECRET
    assert crypto.open_sealed(crypto.seal(b"", key, context=CONTEXT), key, context=CONTEXT) == b""


def test_each_seal_uses_a_fresh_nonce(key: SealKey) -> None:
    assert crypto.seal(SECRET, key, context=CONTEXT) != crypto.seal(SECRET, key, context=CONTEXT)


def test_wrong_key_is_refused(key: SealKey) -> None:
    blob = crypto.seal(SECRET, key, context=CONTEXT)
    with pytest.raises(SealError):
        crypto.open_sealed(blob, SealKey.generate(), context=CONTEXT)


def test_wrong_key_is_refused_even_with_a_forged_key_id(key: SealKey) -> None:
    """The key id in the header is a hint, not the check: the AEAD tag is."""
    other = SealKey.generate()
    blob = crypto.seal(SECRET, other, context=CONTEXT)
    forged = blob[:4] + key.key_id + blob[12:]
    with pytest.raises(SealError, match="authentication"):
        crypto.open_sealed(forged, key, context=CONTEXT)


@pytest.mark.parametrize(
    "context",
    [
        b"",
        b"trustmesh/identity/example.org/1/jwt-key",
        b"trustmesh/identity/example.org/2/root-key",
    ],
)
def test_wrong_context_is_refused(key: SealKey, context: bytes) -> None:
    blob = crypto.seal(SECRET, key, context=CONTEXT)
    with pytest.raises(SealError):
        crypto.open_sealed(blob, key, context=context)


def test_every_single_bit_flip_is_refused(key: SealKey) -> None:
    blob = crypto.seal(b"k", key, context=CONTEXT)
    assert len(blob) == 4 + 8 + 12 + 1 + 16  # magic | key id | nonce | ciphertext | tag
    for i in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[i] ^= 1 << bit
            with pytest.raises(SealError):
                crypto.open_sealed(bytes(tampered), key, context=CONTEXT)


def test_every_truncation_and_extension_is_refused(key: SealKey) -> None:
    blob = crypto.seal(SECRET, key, context=CONTEXT)
    for cut in range(len(blob)):
        with pytest.raises(SealError):
            crypto.open_sealed(blob[:cut], key, context=CONTEXT)
    with pytest.raises(SealError):
        crypto.open_sealed(blob + b"\x00", key, context=CONTEXT)


def test_reseal_rotates_to_the_new_key(key: SealKey) -> None:
    new = SealKey.generate()
    old_blob = crypto.seal(SECRET, key, context=CONTEXT)
    new_blob = crypto.reseal(old_blob, key, new, context=CONTEXT)
    assert crypto.open_sealed(new_blob, new, context=CONTEXT) == SECRET
    with pytest.raises(SealError):
        crypto.open_sealed(new_blob, key, context=CONTEXT)
    with pytest.raises(SealError):  # the rotation keeps the purpose binding
        crypto.open_sealed(new_blob, new, context=b"another purpose")


def test_reseal_needs_the_old_key_and_context(key: SealKey) -> None:
    blob = crypto.seal(SECRET, key, context=CONTEXT)
    new = SealKey.generate()
    with pytest.raises(SealError):
        crypto.reseal(blob, SealKey.generate(), new, context=CONTEXT)
    with pytest.raises(SealError):
        crypto.reseal(blob, key, new, context=b"another purpose")


def test_a_sealing_key_is_exactly_32_bytes() -> None:
    for size in (0, 16, 31, 33):
        with pytest.raises(KeySourceError):
            SealKey(os.urandom(size), "test")


def test_repr_never_contains_the_key() -> None:
    raw = bytes(range(100, 132))
    key = SealKey(raw, "env")
    for text in (repr(key), str(key), f"{key!r}", repr([key])):
        assert raw.hex() not in text
        assert repr(raw) not in text
        assert repr(raw)[2:-1] not in text
        assert _b64url(raw).rstrip("=") not in text
        assert base64.b64encode(raw).decode().rstrip("=") not in text
        assert "source='env'" in text


# -- load_seal_key ---------------------------------------------------------------------------


def test_env_key_wins_over_passphrase_and_key_file(tmp_path: Path) -> None:
    raw = os.urandom(32)
    environ = {SEAL_KEY_ENV: _b64url(raw), SEAL_PASSPHRASE_ENV: PASSPHRASE}
    key = crypto.load_seal_key(tmp_path, dev=True, environ=environ)
    assert key.key == raw
    assert key.source == "env"
    assert key.warning is None
    assert list(tmp_path.iterdir()) == []  # neither a salt nor a key file was made


@pytest.mark.parametrize("padded", [True, False])
def test_env_key_is_base64url_with_or_without_padding(tmp_path: Path, padded: bool) -> None:
    raw = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFE, 0xFF])  # encodes to '-' and '_' characters
    text = _b64url(raw) if padded else _b64url(raw).rstrip("=")
    assert "-" in text
    assert "_" in text
    key = crypto.load_seal_key(tmp_path, dev=False, environ={SEAL_KEY_ENV: text})
    assert key.key == raw


@pytest.mark.parametrize(
    "value",
    [
        _b64url(bytes(range(16))),  # the wrong length (fixed: workers collect alike)
        _b64url(bytes(range(31))),
        _b64url(bytes(range(33))),
        _b64url(bytes(range(64))),
        "not base64 at all!",
        "a",
        "ключ-ключ-ключ-ключ-ключ-ключ-ключ-ключ-ключ",
    ],
)
def test_env_key_of_wrong_length_or_garbage_is_refused(tmp_path: Path, value: str) -> None:
    environ = {SEAL_KEY_ENV: value, SEAL_PASSPHRASE_ENV: PASSPHRASE}
    with pytest.raises(KeySourceError, match=SEAL_KEY_ENV):
        crypto.load_seal_key(tmp_path, dev=True, environ=environ)
    assert list(tmp_path.iterdir()) == []  # refused, not silently replaced by another source


def test_passphrase_derives_the_same_key_from_the_persisted_salt(tmp_path: Path) -> None:
    environ = {SEAL_PASSPHRASE_ENV: PASSPHRASE}
    first = crypto.load_seal_key(tmp_path, dev=False, environ=environ)
    salt = (tmp_path / "seal.salt").read_bytes()
    second = crypto.load_seal_key(tmp_path, dev=False, environ=environ)
    assert first.source == second.source == "passphrase"
    assert first.key == second.key
    assert (tmp_path / "seal.salt").read_bytes() == salt
    assert len(salt) >= 16
    assert _mode(tmp_path / "seal.salt") == 0o600
    assert not (tmp_path / "seal.key").exists()
    blob = crypto.seal(SECRET, first, context=CONTEXT)
    assert crypto.open_sealed(blob, second, context=CONTEXT) == SECRET


def test_passphrase_key_depends_on_the_salt_and_the_passphrase(tmp_path: Path) -> None:
    a = crypto.load_seal_key(tmp_path / "a", dev=False, environ={SEAL_PASSPHRASE_ENV: PASSPHRASE})
    b = crypto.load_seal_key(tmp_path / "b", dev=False, environ={SEAL_PASSPHRASE_ENV: PASSPHRASE})
    assert a.key != b.key  # each state directory has its own salt
    c = crypto.load_seal_key(
        tmp_path / "a", dev=False, environ={SEAL_PASSPHRASE_ENV: PASSPHRASE + "!"}
    )
    assert c.key != a.key
    blob = crypto.seal(SECRET, a, context=CONTEXT)
    with pytest.raises(SealError):
        crypto.open_sealed(blob, c, context=CONTEXT)


@pytest.mark.parametrize("passphrase", ["short", "elevenchars"])
def test_short_passphrase_is_refused(tmp_path: Path, passphrase: str) -> None:
    with pytest.raises(KeySourceError, match="at least 12"):
        crypto.load_seal_key(tmp_path, dev=True, environ={SEAL_PASSPHRASE_ENV: passphrase})
    assert not (tmp_path / "seal.key").exists()


@pytest.mark.parametrize("environ", [{}, {SEAL_KEY_ENV: "", SEAL_PASSPHRASE_ENV: ""}])
def test_no_key_outside_dev_mode_is_refused_naming_both_variables(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    with pytest.raises(KeySourceError) as info:
        crypto.load_seal_key(tmp_path, dev=False, environ=environ)
    assert SEAL_KEY_ENV in str(info.value)
    assert SEAL_PASSPHRASE_ENV in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_dev_mode_creates_a_0600_key_file_and_warns(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = crypto.load_seal_key(state, dev=True, environ={})
    path = state / "seal.key"
    assert key.source == "keyfile"
    assert _mode(path) == 0o600
    assert _mode(state) & 0o077 == 0
    assert path.read_bytes() == key.key
    assert key.warning is not None
    assert "DEV MODE" in key.warning
    assert str(path) in key.warning
    again = crypto.load_seal_key(state, dev=True, environ={})
    assert again.key == key.key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "seal.key"
    path.write_bytes(os.urandom(32))
    path.chmod(mode)
    with pytest.raises(KeySourceError, match="0600"):
        crypto.load_seal_key(tmp_path, dev=True, environ={})


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_key_file_of_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "seal.key"
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    with pytest.raises(KeySourceError, match="32 bytes"):
        crypto.load_seal_key(tmp_path, dev=True, environ={})


def test_symlinked_key_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "seal.key").symlink_to(target)
    with pytest.raises((KeySourceError, OSError)):  # O_NOFOLLOW: refused, whatever the type
        crypto.load_seal_key(state, dev=True, environ={})
