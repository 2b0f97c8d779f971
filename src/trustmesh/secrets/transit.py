"""Vault's transit engine (encryption as a service) as pure logic: a key and a request in,
a value or a refusal out. No storage, no HTTP: the adapter loads the :class:`TransitKey`,
calls one method, stores what it returns and answers Vault's JSON.

What is implemented, as Vault's API documentation ("Transit secrets engine (API)") and its
``builtin/logical/transit`` code define it, field names and error texts included:

- ``POST keys/:name`` → :meth:`TransitKey.create`; ``GET keys/:name`` → :meth:`~TransitKey.read`;
  ``POST keys/:name/rotate`` → :meth:`~TransitKey.rotate`; ``POST keys/:name/config`` →
  :meth:`~TransitKey.configure`; ``DELETE keys/:name`` → :meth:`~TransitKey.ensure_deletable`.
- ``encrypt/:name``, ``decrypt/:name``, ``rewrap/:name``: one item (:meth:`~TransitKey.encrypt`,
  :meth:`~TransitKey.decrypt`, :meth:`~TransitKey.rewrap`) or ``batch_input``
  (:meth:`~TransitKey.encrypt_batch` and its siblings).
- ``datakey/(plaintext|wrapped)/:name`` → :meth:`~TransitKey.datakey`.

Only ``aes256-gcm96`` keys exist; derived and convergent keys, exportable keys and plaintext
backups are refused as not supported, never accepted and ignored. Likewise a ``context`` or
``nonce`` sent with a request is refused (Vault ignores a context sent to a key that is not
derived; a caller who believes it binds the ciphertext would be misled).

Ciphertext: ``vault:v<version>:<base64>``, the base64 of a blob made by
:func:`trustmesh.crypto.seal` (AES-256-GCM, a random 96-bit nonce) under that version's key.
The associated data binds the key's name and the version, then Vault's optional
``associated_data`` (base64, as in Vault): a ciphertext of key ``a`` never opens under key
``b``, even with the same key bytes, nor under another version or other associated data.
Decryption checks, in Vault's order and with its messages: the prefix, the fields, the
version (above ``latest_version``: too new; below ``min_decryption_version``: too old), the
base64, then authentication (``cipher: message authentication failed`` for any tampered,
truncated or foreign ciphertext: never garbage).

Refusals raise :class:`~trustmesh.secrets.transit_fields.TransitError` (a ``UsageError``: HTTP 400); the adapter answers
``{"errors": [str(exc)]}``. A message never holds plaintext or key bytes. Batches follow
Vault: structural problems (not a list, an item that is not an object, a field of the wrong
JSON type) refuse the whole request; anything else fails its own item only, which gets
``{"error": ..., "reference": ...}`` while the others are served. ``encrypt`` and
``decrypt`` batches with a failed item answer 400 (or ``partial_failure_response_code``
when at least one item succeeded); ``rewrap`` batches answer 200, as Vault's do.

Deliberate differences from Vault: ``rewrap`` also takes ``associated_data`` (without it an
AD-bound ciphertext could never be rewrapped); a version written ``v0`` or with leading
zeros is refused (Vault reads ``v0`` as version 1); an item without its plaintext or
ciphertext fails alone instead of failing the batch; ``supports_derivation`` is false.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar, NotRequired, TypedDict

from trustmesh.crypto import SealKey, open_sealed, seal
from trustmesh.errors import SealError, StateError
from trustmesh.secrets.transit_fields import (
    BatchAnswer,
    TransitError,
    associated_bytes,
    b64decode,
    batch,
    is_int,
    item_options,
    item_text,
    item_version,
    refuse_derivation,
    require_int,
    strict_b64decode,
)

__all__ = [
    "KEY_NOT_FOUND",
    "KEY_TYPE",
    "BatchAnswer",
    "DatakeyResult",
    "DecryptResult",
    "EncryptResult",
    "KeyVersion",
    "TransitError",
    "TransitKey",
]

KEY_TYPE = "aes256-gcm96"
#: Vault's answer (400) when encrypt/decrypt/rewrap/datakey name a key that does not exist.
KEY_NOT_FOUND = "encryption key not found"
PREFIX = "vault:v"

#: Key types Vault knows and trustmesh does not offer (anything else is "unknown").
_VAULT_TYPES = frozenset(
    [
        "aes128-gcm96",
        "chacha20-poly1305",
        "ecdsa-p256",
        "ecdsa-p384",
        "ecdsa-p521",
        "ed25519",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "hmac",
        "managed_key",
        "aes128-cmac",
        "aes256-cmac",
    ]
)
#: Vault's ``framework.GenericNameRegex`` (ASCII ``\\w``), bounded in length.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,254}[A-Za-z0-9_])?")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
_CONTEXT_LABEL = b"trustmesh/secrets/transit/v1\x00"
_KEY_BYTES = 32
_DATAKEY_BITS = frozenset({128, 256, 512})
_FORMAT = 1

_TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
_AUTH_FAILED = "cipher: message authentication failed"
_MISSING_PLAINTEXT = "missing plaintext to encrypt"
_MISSING_CIPHERTEXT = "missing ciphertext to decrypt"
_STORED_FIELDS = frozenset(
    [
        "format",
        "name",
        "type",
        "min_decryption_version",
        "min_encryption_version",
        "deletion_allowed",
        "versions",
    ]
)


class EncryptResult(TypedDict):
    ciphertext: str
    key_version: int


class DecryptResult(TypedDict):
    plaintext: str


class DatakeyResult(TypedDict):
    ciphertext: str
    key_version: int
    plaintext: NotRequired[str]  # only for ``datakey/plaintext``


@dataclass(frozen=True, repr=False)
class KeyVersion:
    """One version of a key: 32 key bytes and its creation time (unix seconds)."""

    key: bytes
    created: int

    def __repr__(self) -> str:  # never print the key
        return f"KeyVersion(created={self.created})"


@dataclass(frozen=True, repr=False)
class TransitKey:
    """A named key ring: versions 1..``latest_version`` and Vault's settings. Immutable:
    every operation that changes it returns a new one."""

    name: str
    versions: Mapping[int, KeyVersion]
    type: str = KEY_TYPE
    min_decryption_version: int = 1
    min_encryption_version: int = 0  # 0: any version from min_decryption_version up
    deletion_allowed: bool = False

    derived: ClassVar[bool] = False
    exportable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(dict(sorted(self.versions.items()))))
        problem = self._invalid()
        if problem:
            raise StateError(f"invalid transit key: {problem}")

    def _invalid(self) -> str | None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            return "bad name"
        if self.type != KEY_TYPE:
            return "unsupported type"
        if not self.versions or list(self.versions) != list(range(1, len(self.versions) + 1)):
            return "versions must be 1..n"
        for version in self.versions.values():
            if not isinstance(version, KeyVersion) or len(version.key) != _KEY_BYTES:
                return "a version's key is not 32 bytes"
            if not is_int(version.created) or version.created < 0:
                return "a version's creation time is not a unix time"
        latest = len(self.versions)
        if (
            not is_int(self.min_decryption_version)
            or not 1 <= self.min_decryption_version <= latest
        ):
            return "min_decryption_version out of range"
        if (
            not is_int(self.min_encryption_version)
            or not 0 <= self.min_encryption_version <= latest
        ):
            return "min_encryption_version out of range"
        if 0 < self.min_encryption_version < self.min_decryption_version:
            return "min_encryption_version below min_decryption_version"
        if not isinstance(self.deletion_allowed, bool):
            return "deletion_allowed is not a boolean"
        return None

    def __repr__(self) -> str:  # never print a key
        return f"TransitKey(name={self.name!r}, latest_version={self.latest_version})"

    @property
    def latest_version(self) -> int:
        return len(self.versions)

    # -- the key ring ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        *,
        now: float,
        key_type: str = KEY_TYPE,
        derived: bool = False,
        convergent_encryption: bool = False,
        exportable: bool = False,
        allow_plaintext_backup: bool = False,
    ) -> TransitKey:
        """A new key ring with version 1 (``POST keys/:name``), created at ``now``."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TransitError("invalid key name")
        if key_type != KEY_TYPE:
            if key_type in _VAULT_TYPES:
                raise TransitError(f"key type {key_type} is not supported (only {KEY_TYPE})")
            raise TransitError(f"unknown key type {key_type}")
        if convergent_encryption and not derived:
            raise TransitError("convergent encryption requires derivation to be enabled")
        if derived:
            raise TransitError(
                "derived keys (key derivation, convergent encryption) are not supported"
            )
        if exportable:
            raise TransitError("exportable keys are not supported")
        if allow_plaintext_backup:
            raise TransitError("plaintext backups are not supported")
        return cls(name, {1: _new_version(now)})

    def rotate(self, *, now: float) -> TransitKey:
        """A new latest version (``POST keys/:name/rotate``); older ones still decrypt."""
        versions = {**self.versions, self.latest_version + 1: _new_version(now)}
        return replace(self, versions=versions)

    def configure(
        self,
        *,
        min_decryption_version: int | None = None,
        min_encryption_version: int | None = None,
        deletion_allowed: bool | None = None,
        exportable: bool | None = None,
    ) -> tuple[TransitKey, tuple[str, ...]]:
        """``POST keys/:name/config``, validated as Vault does: the new key and warnings."""
        warnings: list[str] = []
        min_dec = self.min_decryption_version
        if min_decryption_version is not None:
            require_int("min_decryption_version", min_decryption_version)
            if min_decryption_version < 0:
                raise TransitError("min decryption version cannot be negative")
            if min_decryption_version == 0:
                min_decryption_version = 1
                warnings.append(
                    "since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1"
                )
            if min_decryption_version != min_dec and min_decryption_version > self.latest_version:
                raise TransitError(
                    f"cannot set min decryption version of {min_decryption_version}, "
                    f"latest key version is {self.latest_version}"
                )
            min_dec = min_decryption_version
        min_enc = self.min_encryption_version
        if min_encryption_version is not None:
            require_int("min_encryption_version", min_encryption_version)
            if min_encryption_version < 0:
                raise TransitError("min encryption version cannot be negative")
            if min_encryption_version != min_enc and min_encryption_version > self.latest_version:
                raise TransitError(
                    f"cannot set min encryption version of {min_encryption_version}, "
                    f"latest key version is {self.latest_version}"
                )
            min_enc = min_encryption_version
        if 0 < min_enc < min_dec:
            raise TransitError(
                "cannot set min encryption/decryption values; min encryption version of "
                f"{min_enc} must be greater than or equal to min decryption version of {min_dec}"
            )
        allowed = self.deletion_allowed
        if deletion_allowed is not None:
            if not isinstance(deletion_allowed, bool):
                raise TransitError("deletion_allowed must be a boolean")
            allowed = deletion_allowed
        if exportable:
            raise TransitError("exportable keys are not supported")
        new = replace(
            self,
            min_decryption_version=min_dec,
            min_encryption_version=min_enc,
            deletion_allowed=allowed,
        )
        return new, tuple(warnings)

    def ensure_deletable(self) -> None:
        """``DELETE keys/:name`` is refused unless ``deletion_allowed`` was configured."""
        if not self.deletion_allowed:
            raise TransitError("deletion is not allowed for this key")

    def read(self) -> dict[str, object]:
        """The ``data`` Vault answers for ``GET keys/:name``. ``keys`` lists the working
        set (versions from ``min_decryption_version`` up) with their creation times."""
        return {
            "allow_plaintext_backup": False,
            "auto_rotate_period": 0,
            "deletion_allowed": self.deletion_allowed,
            "derived": False,
            "exportable": False,
            "imported_key": False,
            "keys": {
                str(number): version.created
                for number, version in self.versions.items()
                if number >= self.min_decryption_version
            },
            "latest_version": self.latest_version,
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "name": self.name,
            "supports_decryption": True,
            "supports_derivation": False,
            "supports_encryption": True,
            "supports_signing": False,
            "type": self.type,
        }

    # -- one item -------------------------------------------------------------------------

    def encrypt(
        self,
        plaintext: str | None,
        *,
        key_version: int | None = None,
        associated_data: str | None = None,
        context: str | None = None,
        nonce: str | None = None,
    ) -> EncryptResult:
        """``POST encrypt/:name``: ``plaintext`` is base64, as in Vault."""
        refuse_derivation(context, nonce)
        if not isinstance(plaintext, str):
            raise TransitError(_MISSING_PLAINTEXT)
        raw = b64decode(plaintext)
        return self._seal(raw, key_version, associated_bytes(associated_data))

    def decrypt(
        self,
        ciphertext: str | None,
        *,
        associated_data: str | None = None,
        context: str | None = None,
        nonce: str | None = None,
    ) -> DecryptResult:
        """``POST decrypt/:name``: the plaintext, base64-encoded."""
        refuse_derivation(context, nonce)
        raw = self._open(ciphertext, associated_bytes(associated_data))
        return {"plaintext": base64.b64encode(raw).decode("ascii")}

    def rewrap(
        self,
        ciphertext: str | None,
        *,
        key_version: int | None = None,
        associated_data: str | None = None,
        context: str | None = None,
        nonce: str | None = None,
    ) -> EncryptResult:
        """``POST rewrap/:name``: the same plaintext under ``key_version`` (latest by
        default), never leaving this function."""
        refuse_derivation(context, nonce)
        associated = associated_bytes(associated_data)
        return self._seal(self._open(ciphertext, associated), key_version, associated)

    def datakey(
        self,
        kind: str,
        *,
        bits: int = 256,
        key_version: int | None = None,
        context: str | None = None,
        nonce: str | None = None,
    ) -> DatakeyResult:
        """``POST datakey/:kind/:name``: a fresh random key, wrapped under this key; its
        plaintext too when ``kind`` is ``plaintext`` (``wrapped``: the ciphertext only)."""
        if kind not in ("plaintext", "wrapped"):
            raise TransitError("Invalid path, must be 'plaintext' or 'wrapped'")
        refuse_derivation(context, nonce)
        if not is_int(bits) or bits not in _DATAKEY_BITS:
            raise TransitError("invalid bit length")
        raw = os.urandom(bits // 8)
        sealed = self._seal(raw, key_version, b"")
        result: DatakeyResult = {
            "ciphertext": sealed["ciphertext"],
            "key_version": sealed["key_version"],
        }
        if kind == "plaintext":
            result["plaintext"] = base64.b64encode(raw).decode("ascii")
        return result

    # -- batches --------------------------------------------------------------------------

    def encrypt_batch(
        self, items: object, *, partial_failure_response_code: int | None = None
    ) -> BatchAnswer:
        """``encrypt/:name`` with ``batch_input``: each item as :meth:`encrypt`."""

        def one(item: Mapping[str, object]) -> dict[str, object]:
            plaintext = item_text(item, "plaintext")
            return dict(
                self.encrypt(plaintext, key_version=item_version(item), **item_options(item))
            )

        return batch(items, one, {}, partial_failure_response_code)

    def decrypt_batch(
        self, items: object, *, partial_failure_response_code: int | None = None
    ) -> BatchAnswer:
        """``decrypt/:name`` with ``batch_input``: each item as :meth:`decrypt`. A failed
        item carries ``"plaintext": ""`` beside its error, as in Vault."""

        def one(item: Mapping[str, object]) -> dict[str, object]:
            return dict(self.decrypt(item_text(item, "ciphertext"), **item_options(item)))

        return batch(items, one, {"plaintext": ""}, partial_failure_response_code)

    def rewrap_batch(self, items: object) -> BatchAnswer:
        """``rewrap/:name`` with ``batch_input``: each item as :meth:`rewrap`. Vault
        answers 200 whatever failed (each failure is in its item)."""

        def one(item: Mapping[str, object]) -> dict[str, object]:
            ciphertext = item_text(item, "ciphertext")
            return dict(
                self.rewrap(ciphertext, key_version=item_version(item), **item_options(item))
            )

        return replace(batch(items, one, {}, None), status=200)

    # -- storage --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """JSON, key bytes in base64: the adapter seals these bytes before storing them."""
        document = {
            "format": _FORMAT,
            "name": self.name,
            "type": self.type,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "deletion_allowed": self.deletion_allowed,
            "versions": {
                str(number): {
                    "key": base64.b64encode(version.key).decode("ascii"),
                    "created": version.created,
                }
                for number, version in self.versions.items()
            },
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> TransitKey:
        """The inverse of :meth:`to_bytes`; ``StateError`` for anything else (the message
        names the field, never a value)."""
        try:
            document = json.loads(data, object_pairs_hook=_unique_object)
        except (ValueError, RecursionError):
            raise StateError("stored transit key: not JSON") from None
        if not isinstance(document, dict) or set(document) != _STORED_FIELDS:
            raise StateError("stored transit key: unexpected fields")
        if document["format"] != _FORMAT:
            raise StateError("stored transit key: unknown format")
        raw_versions = document["versions"]
        if not isinstance(raw_versions, dict):
            raise StateError("stored transit key: versions is not an object")
        versions: dict[int, KeyVersion] = {}
        for number, entry in raw_versions.items():
            if not _VERSION.fullmatch(number) or not isinstance(entry, dict):
                raise StateError("stored transit key: bad version entry")
            if set(entry) != {"key", "created"} or not isinstance(entry["key"], str):
                raise StateError("stored transit key: bad version entry")
            try:
                key = strict_b64decode(entry["key"])
            except ValueError:
                raise StateError("stored transit key: a version's key is not base64") from None
            versions[int(number)] = KeyVersion(key, entry["created"])
        return cls(
            name=document["name"],
            versions=versions,
            type=document["type"],
            min_decryption_version=document["min_decryption_version"],
            min_encryption_version=document["min_encryption_version"],
            deletion_allowed=document["deletion_allowed"],
        )

    # -- inside ---------------------------------------------------------------------------

    def _context(self, version: int, associated_data: bytes) -> bytes:
        """What the AEAD authenticates besides the ciphertext: the key's name (length-
        prefixed), the version, then the caller's associated data."""
        name = self.name.encode("utf-8")
        return b"".join(
            (
                _CONTEXT_LABEL,
                len(name).to_bytes(2, "big"),
                name,
                version.to_bytes(8, "big"),
                associated_data,
            )
        )

    def _encryption_version(self, key_version: int | None) -> int:
        if key_version is None or key_version == 0:
            return self.latest_version
        require_int("key_version", key_version)
        if key_version < 0:
            raise TransitError("requested version for encryption is negative")
        if key_version > self.latest_version:
            raise TransitError(
                "requested version for encryption is higher than the latest key version"
            )
        if key_version < self.min_encryption_version:
            raise TransitError(
                "requested version for encryption is less than the minimum encryption key version"
            )
        if key_version < self.min_decryption_version:  # archived, as in Vault
            raise TransitError("no such key version")
        return key_version

    def _seal(self, raw: bytes, key_version: int | None, associated: bytes) -> EncryptResult:
        version = self._encryption_version(key_version)
        key = SealKey(self.versions[version].key, "transit")
        blob = seal(raw, key, context=self._context(version, associated))
        ciphertext = f"{PREFIX}{version}:{base64.b64encode(blob).decode('ascii')}"
        return {"ciphertext": ciphertext, "key_version": version}

    def _open(self, ciphertext: str | None, associated: bytes) -> bytes:
        if not isinstance(ciphertext, str) or not ciphertext:
            raise TransitError(_MISSING_CIPHERTEXT)
        if not ciphertext.startswith(PREFIX):
            raise TransitError("invalid ciphertext: no prefix")
        number, colon, body = ciphertext[len(PREFIX) :].partition(":")
        if not colon:
            raise TransitError("invalid ciphertext: wrong number of fields")
        if not _VERSION.fullmatch(number):
            raise TransitError("invalid ciphertext: version number could not be decoded")
        version = int(number)
        if version > self.latest_version:
            raise TransitError("invalid ciphertext: version is too new")
        if version < self.min_decryption_version:
            raise TransitError(_TOO_OLD)
        try:
            blob = strict_b64decode(body)
        except ValueError:
            raise TransitError("invalid ciphertext: could not decode base64") from None
        key = SealKey(self.versions[version].key, "transit")
        try:
            return open_sealed(blob, key, context=self._context(version, associated))
        except SealError:
            raise TransitError(_AUTH_FAILED) from None


def _new_version(now: float) -> KeyVersion:
    return KeyVersion(os.urandom(_KEY_BYTES), int(now))


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document
