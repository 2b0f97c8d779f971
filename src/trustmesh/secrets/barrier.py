"""The barrier: everything the secrets service stores passes through it sealed.

Three layers of keys, as Vault has them:

- the **unseal key** (256 bits) exists only while shares are combined: ``sys/init``
  splits it with Shamir's scheme into N shares, any T of which rebuild it;
- the **root key** (256 bits) is stored sealed under the unseal key;
- the **keyring** (data keys by term) is stored sealed under the root key; every value
  is sealed (AES-256-GCM, :func:`trustmesh.crypto.seal`) under the keyring's active
  data key with its place as associated data (a KV value under its path and version), so
  a value copied to another place does not open, and a flipped byte is an integrity
  error, never garbage.

Unsealing reads no key until T shares are given. A share that is not one of the shares
``sys/init`` handed out is refused at once (the seal configuration keeps a salted HMAC of
each) and counted; T good shares rebuild the unseal key. Sealing drops the keys from
memory. :meth:`Barrier.rotate_root` puts the keyring under a new root key and starts a
new data-key term in one transaction, while the service keeps serving (the unseal key is
held in memory while unsealed, as the root key is, and dropped with it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from trustmesh import crypto
from trustmesh.errors import CryptoError, SealError, UnavailableError, UsageError
from trustmesh.reasons import Reason
from trustmesh.secrets.shamir import combine, split
from trustmesh.secrets.store import SecretsStore

__all__ = ["Barrier", "IntegrityError", "Keyring", "SealConfig", "decode_share"]

_ROOT_CONTEXT = b"trustmesh/secrets/root-key"
_KEYRING_CONTEXT = b"trustmesh/secrets/keyring"
_MAGIC_LEN = 4
_KEY_ID_LEN = 8


class IntegrityError(CryptoError):
    """A stored blob failed authentication: tampered with, or moved from another place."""

    code = "integrity_error"
    public_message = "a stored value failed its integrity check"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason=Reason.STORED_VALUE_CORRUPT)


def decode_share(text: str) -> bytes:
    """A share as ``sys/unseal`` takes it: hex or base64 (Vault takes both)."""
    value = text.strip()
    try:
        if len(value) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in value):
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise UsageError("an unseal key share must be hex or base64") from None


@dataclass(frozen=True)
class SealConfig:
    """How the unseal key was split: N shares, threshold T, and a salted digest of each
    share (to refuse a wrong one at once)."""

    shares: int
    threshold: int
    salt: bytes
    digests: tuple[str, ...]
    initialized_at: float

    def knows(self, share: bytes) -> bool:
        digest = hmac.new(self.salt, share, hashlib.sha256).hexdigest()
        found = False
        for known in self.digests:  # no early exit: the time does not say which one
            found |= hmac.compare_digest(digest, known)
        return found

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "shares": self.shares,
                "threshold": self.threshold,
                "salt": self.salt.hex(),
                "digests": list(self.digests),
                "initialized_at": self.initialized_at,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SealConfig:
        doc = json.loads(raw)
        return cls(
            doc["shares"],
            doc["threshold"],
            bytes.fromhex(doc["salt"]),
            tuple(doc["digests"]),
            doc["initialized_at"],
        )


@dataclass(frozen=True)
class Keyring:
    """The data keys by term; ``active`` seals new values, every term still opens."""

    terms: dict[int, bytes]
    active: int
    installed: dict[int, float] = field(default_factory=dict)

    @classmethod
    def first(cls, now: float) -> Keyring:
        return cls({1: os.urandom(32)}, 1, {1: now})

    def rotated(self, now: float) -> Keyring:
        term = self.active + 1
        return Keyring({**self.terms, term: os.urandom(32)}, term, {**self.installed, term: now})

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "active": self.active,
                "terms": {str(t): base64.b64encode(k).decode() for t, k in self.terms.items()},
                "installed": {str(t): at for t, at in self.installed.items()},
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Keyring:
        doc = json.loads(raw)
        return cls(
            {int(t): base64.b64decode(k) for t, k in doc["terms"].items()},
            doc["active"],
            {int(t): at for t, at in doc.get("installed", {}).items()},
        )


class _Unsealing:
    """Shares given so far in one unseal attempt."""

    def __init__(self) -> None:
        self.shares: list[bytes] = []
        self.nonce = str(uuid.uuid4())


class Barrier:
    """The seal state and the keys, over the store. ``clock``: epoch seconds."""

    def __init__(self, store: SecretsStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.config: SealConfig | None = None
        self._keyring: Keyring | None = None
        self._keys: dict[bytes, crypto.SealKey] = {}  # key id -> data key
        self._active: crypto.SealKey | None = None
        self._unsealing: _Unsealing | None = None
        self._unseal_key: crypto.SealKey | None = None
        self.wrong_shares = 0

    # -- state ---------------------------------------------------------------------------

    async def load(self) -> None:
        async with self.store.tx() as tx:
            raw = await tx.system("seal-config")
        self.config = SealConfig.from_bytes(raw) if raw is not None else None

    @property
    def initialized(self) -> bool:
        return self.config is not None

    @property
    def sealed(self) -> bool:
        return self._active is None

    @property
    def progress(self) -> int:
        return len(self._unsealing.shares) if self._unsealing else 0

    @property
    def nonce(self) -> str:
        return self._unsealing.nonce if self._unsealing else ""

    @property
    def term(self) -> int:
        return self._keyring.active if self._keyring else 0

    @property
    def installed_at(self) -> float | None:
        """When the active data-key term was installed (epoch seconds)."""
        keyring = self._keyring
        return keyring.installed.get(keyring.active) if keyring else None

    # -- init, unseal, seal --------------------------------------------------------------

    async def initialize(self, shares: int, threshold: int) -> list[bytes]:
        """Make the keys and split the unseal key; return the shares (shown once). The
        service stays sealed until T of them are given."""
        if not 1 <= shares <= 255 or not 1 <= threshold <= shares:
            raise UsageError("secret_shares must be 1 to 255 and secret_threshold 1 to shares")
        if shares > 1 and threshold < 2:
            raise UsageError("secret_threshold must be at least 2 when there are several shares")
        now = self.clock()
        unseal_key = crypto.SealKey(os.urandom(32), "shares")
        root = crypto.SealKey(os.urandom(32), "root")
        parts = split(unseal_key.key, shares, threshold)
        salt = os.urandom(32)
        config = SealConfig(
            shares,
            threshold,
            salt,
            tuple(hmac.new(salt, p, hashlib.sha256).hexdigest() for p in parts),
            now,
        )
        async with self.store.tx() as tx:
            if await tx.system("seal-config") is not None:
                raise UsageError("the secrets service is already initialized")
            await tx.put_system("seal-config", config.to_bytes())
            await tx.put_system(
                "root-key", crypto.seal(root.key, unseal_key, context=_ROOT_CONTEXT)
            )
            keyring = Keyring.first(now).to_bytes()
            await tx.put_system("keyring", crypto.seal(keyring, root, context=_KEYRING_CONTEXT))
        self.config = config
        return parts

    async def submit(self, share: bytes) -> bool:
        """Give one share; True once the service is unsealed. A share not handed out by
        ``sys/init`` is refused (UsageError) and counted; the same share twice is refused."""
        if self.config is None:
            raise UsageError("the secrets service is not initialized", reason=Reason.SECRETS_SEALED)
        if not self.sealed:
            return True
        if not self.config.knows(share):
            self.wrong_shares += 1
            raise UsageError(
                "this is not an unseal key share of this service",
                reason=Reason.UNSEAL_SHARE_INVALID,
            )
        attempt = self._unsealing = self._unsealing or _Unsealing()
        if any(hmac.compare_digest(share, given) for given in attempt.shares):
            raise UsageError("this share was already given in this unseal attempt")
        attempt.shares.append(share)
        if len(attempt.shares) < self.config.threshold:
            return False
        self._unsealing = None
        shares = attempt.shares
        await self._open(crypto.SealKey(combine(shares, threshold=self.config.threshold), "shares"))
        return True

    def reset(self) -> None:
        """Forget the shares given so far."""
        self._unsealing = None

    def seal(self) -> None:
        """Drop every key from memory: nothing opens until the next unseal."""
        self._keyring = None
        self._keys = {}
        self._active = None
        self._unsealing = None
        self._unseal_key = None

    async def _open(self, unseal_key: crypto.SealKey) -> None:
        async with self.store.tx() as tx:
            sealed_root = await tx.system("root-key")
            sealed_keyring = await tx.system("keyring")
        if sealed_root is None or sealed_keyring is None:
            raise IntegrityError("the root key or the keyring is missing from the store")
        try:
            root = crypto.SealKey(
                crypto.open_sealed(sealed_root, unseal_key, context=_ROOT_CONTEXT), "root"
            )
            keyring = Keyring.from_bytes(
                crypto.open_sealed(sealed_keyring, root, context=_KEYRING_CONTEXT)
            )
        except SealError as exc:
            raise IntegrityError(f"the stored root key did not open: {exc.detail}") from None
        self._unseal_key = unseal_key
        self._install(keyring)

    def _install(self, keyring: Keyring) -> None:
        keys = {t: crypto.SealKey(k, f"term-{t}") for t, k in keyring.terms.items()}
        self._keys = {key.key_id: key for key in keys.values()}
        self._keyring = keyring
        self._active = keys[keyring.active]

    # -- rotation ------------------------------------------------------------------------

    async def rotate_root(self) -> int:
        """Put the keyring under a new root key and start a new data-key term, in one
        transaction, while serving; return the new term. Values sealed under older terms
        still open (the keyring keeps every term)."""
        keyring = self._require_keyring()
        unseal_key = self._unseal_key
        if unseal_key is None:
            raise _sealed()
        new_keyring = keyring.rotated(self.clock())
        new_root = crypto.SealKey(os.urandom(32), "root")
        async with self.store.tx() as tx:
            await tx.put_system(
                "root-key", crypto.seal(new_root.key, unseal_key, context=_ROOT_CONTEXT)
            )
            await tx.put_system(
                "keyring", crypto.seal(new_keyring.to_bytes(), new_root, context=_KEYRING_CONTEXT)
            )
        self._install(new_keyring)
        return new_keyring.active

    # -- values --------------------------------------------------------------------------

    def seal_value(self, plaintext: bytes, place: bytes) -> bytes:
        """``plaintext`` sealed under the active data key, bound to ``place``."""
        if self._active is None:
            raise _sealed()
        return crypto.seal(plaintext, self._active, context=place)

    def open_value(self, blob: bytes, place: bytes) -> bytes:
        """A value :meth:`seal_value` sealed for ``place``; IntegrityError if it does not
        open (tampered with, or sealed for another place)."""
        if self._active is None:
            raise _sealed()
        key = self._keys.get(blob[_MAGIC_LEN : _MAGIC_LEN + _KEY_ID_LEN])
        if key is None:
            raise IntegrityError("a stored value names no data key of the keyring")
        try:
            return crypto.open_sealed(blob, key, context=place)
        except SealError as exc:
            raise IntegrityError(exc.detail) from None

    def _require_keyring(self) -> Keyring:
        if self._keyring is None:
            raise _sealed()
        return self._keyring


def _sealed() -> UnavailableError:
    return UnavailableError("the secrets service is sealed", reason=Reason.SECRETS_SEALED)
