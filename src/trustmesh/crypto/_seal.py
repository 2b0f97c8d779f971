"""Sealing keys at rest: AES-256-GCM under a key from the environment, a passphrase, or
(dev mode only) a 0600 key file.

Blob layout (all fields fixed width)::

    b"TMS1" | key_id (8) | nonce (12) | ciphertext + tag

The associated data is ``magic | key_id | context``: a blob sealed for one purpose
(``context``, e.g. ``b"identity/root-ca-key"``) cannot be swapped in for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from trustmesh.errors import KeySourceError, SealError

MAGIC = b"TMS1"
_KEY_ID_LEN = 8
_NONCE_LEN = 12
_HEADER_LEN = len(MAGIC) + _KEY_ID_LEN + _NONCE_LEN
SEAL_KEY_ENV = "TRUSTMESH_SEAL_KEY"
SEAL_PASSPHRASE_ENV = "TRUSTMESH_SEAL_PASSPHRASE"  # noqa: S105 - the variable's name
KEY_FILE_NAME = "seal.key"
SALT_FILE_NAME = "seal.salt"
DEV_KEY_WARNING = (
    "DEV MODE: keys at rest are sealed with a key file ({path}) that sits beside them. "
    "Anyone who can read the state directory can open them. Set "
    f"{SEAL_KEY_ENV} or {SEAL_PASSPHRASE_ENV} for anything but local development."
)


@dataclass(frozen=True, repr=False)
class SealKey:
    """A 256-bit sealing key and where it came from (``env``, ``passphrase``, ``keyfile``)."""

    key: bytes
    source: str
    warning: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise KeySourceError("a sealing key must be exactly 32 bytes")

    def __repr__(self) -> str:  # never print the key
        return f"SealKey(source={self.source!r}, key_id={self.key_id.hex()})"

    @property
    def key_id(self) -> bytes:
        return hmac.new(self.key, b"trustmesh seal key id", hashlib.sha256).digest()[:_KEY_ID_LEN]

    @classmethod
    def generate(cls, source: str = "generated") -> SealKey:
        return cls(os.urandom(32), source)

    @classmethod
    def from_passphrase(cls, passphrase: str, salt: bytes) -> SealKey:
        if len(passphrase) < 12:
            raise KeySourceError("the sealing passphrase must be at least 12 characters")
        kdf = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1)
        return cls(kdf.derive(passphrase.encode("utf-8")), "passphrase")


def seal(plaintext: bytes, key: SealKey, *, context: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` for one purpose (``context``)."""
    nonce = os.urandom(_NONCE_LEN)
    head = MAGIC + key.key_id
    return head + nonce + AESGCM(key.key).encrypt(nonce, plaintext, head + context)


def open_sealed(blob: bytes, key: SealKey, *, context: bytes) -> bytes:
    """Open a blob made by :func:`seal` with the same key and context, or raise SealError."""
    if len(blob) < _HEADER_LEN + 16 or not blob.startswith(MAGIC):
        raise SealError("not a sealed blob")
    key_id = blob[len(MAGIC) : len(MAGIC) + _KEY_ID_LEN]
    if not hmac.compare_digest(key_id, key.key_id):
        raise SealError("sealed under a different key (wrong passphrase or key?)")
    nonce = blob[len(MAGIC) + _KEY_ID_LEN : _HEADER_LEN]
    try:
        return AESGCM(key.key).decrypt(nonce, blob[_HEADER_LEN:], MAGIC + key_id + context)
    except InvalidTag:
        raise SealError("sealed blob failed authentication (tampered, or wrong context)") from None


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def reseal(blob: bytes, old: SealKey, new: SealKey, *, context: bytes) -> bytes:
    """Rotate a blob to a new key (the old key must still open it)."""
    return seal(open_sealed(blob, old, context=context), new, context=context)


def load_seal_key(
    state_dir: Path, *, dev: bool, environ: Mapping[str, str] | None = None
) -> SealKey:
    """Resolve the sealing key: the environment, then a passphrase, then (dev only) a file."""
    env = os.environ if environ is None else environ
    raw = env.get(SEAL_KEY_ENV)
    if raw:
        try:
            key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise KeySourceError(f"{SEAL_KEY_ENV} is not base64") from None
        if len(key) != 32:
            raise KeySourceError(f"{SEAL_KEY_ENV} must decode to 32 bytes, got {len(key)}")
        return SealKey(key, "env")
    passphrase = env.get(SEAL_PASSPHRASE_ENV)
    if passphrase:
        if len(passphrase) < 12:  # refused before anything is written
            raise KeySourceError("the sealing passphrase must be at least 12 characters")
        return SealKey.from_passphrase(passphrase, _salt(state_dir))
    if not dev:
        raise KeySourceError(
            f"no sealing key: set {SEAL_KEY_ENV} (32 bytes, base64) or "
            f"{SEAL_PASSPHRASE_ENV}; a key file is allowed only with `dev: true`"
        )
    path = state_dir / KEY_FILE_NAME
    return SealKey(
        _read_or_create_private_file(path, 32), "keyfile", DEV_KEY_WARNING.format(path=path)
    )


def _salt(state_dir: Path) -> bytes:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / SALT_FILE_NAME
    if not path.exists():
        _write_private_file(path, os.urandom(16))
    return path.read_bytes()


def _read_or_create_private_file(path: Path, size: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        _write_private_file(path, os.urandom(size))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeySourceError(f"{path} cannot be opened safely ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise KeySourceError(f"{path} is owned by another user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeySourceError(
                f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); it must be 0600"
            )
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(data) != size:
        raise KeySourceError(f"{path} must hold exactly {size} bytes")
    return data


def _write_private_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_sealed(
    path: Path, seal_key: SealKey, *, context: bytes, make: Callable[[], bytes]
) -> bytes:
    """The plaintext kept sealed (bound to ``context``) in ``path``: opened, or made by
    ``make`` and written 0600 on first use (if another process wins that race, its
    file is read)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        plaintext = make()
        try:
            _write_private_file(path, seal(plaintext, seal_key, context=context))
        except FileExistsError:
            pass
        else:
            return plaintext
    return open_sealed(path.read_bytes(), seal_key, context=context)
