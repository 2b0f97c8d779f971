"""Detached Ed25519 signatures (RFC 8032 §5.1): what the audit log signs its checkpoints
with, so that a copy of a checkpoint kept anywhere proves what the log held.

- a signing key is made with :func:`generate_signing_key`, or rebuilt from its 32-byte
  seed (:func:`signing_key_from_seed`), and kept sealed at rest
  (:func:`load_or_create_signing_key`: the raw seed, sealed for one purpose);
- a verifier holds only the raw 32-byte public key (:func:`signing_public_key`) and
  names it by its RFC 7638 thumbprint as an OKP JWK (RFC 8037 §2,
  :func:`signing_key_id`);
- :func:`verify_detached` answers True or False for every signature, well-formed or
  not; it raises :class:`~trustmesh.errors.CryptoError` only for a public key that is
  not one (a mistake of the caller's, not a forgery to report).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trustmesh.crypto._seal import SealKey, load_or_create_sealed
from trustmesh.errors import CryptoError

#: An Ed25519 private key (RFC 8032).
SigningKey = Ed25519PrivateKey
_SEED_LEN = 32
_SIGNATURE_LEN = 64


def generate_signing_key() -> SigningKey:
    """A new Ed25519 private key (its seed from the operating system's CSPRNG)."""
    return Ed25519PrivateKey.generate()


def signing_key_from_seed(seed: bytes) -> SigningKey:
    """The Ed25519 key whose 32-byte secret (RFC 8032 §5.1.5) is ``seed``."""
    if len(seed) != _SEED_LEN:
        raise CryptoError(f"an Ed25519 seed is {_SEED_LEN} bytes, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_public_key(key: SigningKey) -> bytes:
    """The raw 32-byte public key (RFC 8032 §5.1.2 encoding)."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signing_key_id(public_key: bytes) -> str:
    """The key's name: the RFC 7638 thumbprint (SHA-256, base64url) of its OKP JWK."""
    _public(public_key)
    x = base64.urlsafe_b64encode(public_key).rstrip(b"=").decode()
    canon = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    digest = hashlib.sha256(canon.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_detached(key: SigningKey, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032 §5.1.6)."""
    return key.sign(message)


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under the raw
    ``public_key`` (RFC 8032 §5.1.7). Any bad signature, of any length, is False."""
    verifier = _public(public_key)
    if len(signature) != _SIGNATURE_LEN:
        return False
    try:
        verifier.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def load_or_create_signing_key(path: Path, seal_key: SealKey, *, context: bytes) -> SigningKey:
    """An Ed25519 key kept sealed (bound to ``context``) in ``path``: opened, or made and
    written 0600 on first use (if another process wins that race, its key is read)."""
    seed = load_or_create_sealed(
        path, seal_key, context=context, make=lambda: generate_signing_key().private_bytes_raw()
    )
    return signing_key_from_seed(seed)


def _public(public_key: bytes) -> Ed25519PublicKey:
    if len(public_key) != _SEED_LEN:
        raise CryptoError(f"an Ed25519 public key is {_SEED_LEN} bytes, got {len(public_key)}")
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise CryptoError("not an Ed25519 public key") from None
