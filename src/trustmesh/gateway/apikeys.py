"""Gateway API keys: their format, how they are stored, what a presented key may do.

A key reads ``tmk_<id>_<secret>``: the ``tmk_`` prefix lets secret scanners recognise a
leaked key, ``<id>`` (12 characters, public) names its record, and ``<secret>`` is 32
bytes from :mod:`secrets` (256 bits), all in lower-case base32 (RFC 4648 §6, no padding)
so that ``_`` separates the parts unambiguously and a key survives being copied
anywhere.

Only a SHA-256 digest of the whole key is stored (the id is inside the digest, so a
digest cannot be moved to another record). A fast hash is the right one here: NIST SP
800-63B §5.1.2.2 asks that a look-up secret of at least 112 bits of entropy be hashed
with an approved one-way function, and reserves salted, slow key derivation for
secrets with less. With 256 random bits no offline guessing can succeed, so there is
no pepper either (one would have to be shared by every process that writes or checks
keys, and survive the rotation of the sealing key, for no gain). Digests are compared
in constant time (:func:`hmac.compare_digest`).

A client presents its key as ``Authorization: ApiKey <key>`` (RFC 9110 §11.6.2; the
scheme is case-insensitive) or as ``X-API-Key: <key>``; the gateway removes both
headers before forwarding (:data:`STRIP_HEADERS`).

Everything here is pure: :func:`decide` turns a record (or its absence), a presented
key, a route name and ``now`` into a frozen :class:`KeyDecision`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from trustmesh.config.gateway import GatewayRoute
from trustmesh.errors import UsageError
from trustmesh.reasons import Reason

__all__ = [
    "ALL_ROUTES",
    "API_KEY_HEADER",
    "API_KEY_SCHEME",
    "KEY_PREFIX",
    "STRIP_HEADERS",
    "IssuedKey",
    "KeyDecision",
    "KeyRecord",
    "ParsedKey",
    "check_name",
    "check_roles",
    "check_scopes",
    "decide",
    "hash_key",
    "in_scope",
    "is_key_id",
    "new_key",
    "parse_key",
    "presented_api_key",
    "principal_of",
    "routes_without_api_keys",
]

KEY_PREFIX: Final = "tmk_"
#: A scope that admits every route (that accepts API keys).
ALL_ROUTES: Final = "*"
API_KEY_SCHEME: Final = "apikey"
API_KEY_HEADER: Final = b"x-api-key"
#: Request headers that may carry a key: never forwarded upstream.
STRIP_HEADERS: Final = (b"authorization", API_KEY_HEADER)

_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 §6, lower case
_ID_LENGTH: Final = 12  # 60 bits: unique among any realistic number of keys
_SECRET_BYTES: Final = 32
_SECRET_LENGTH: Final = 52  # ceil(256 / 5)
_ID_RE: Final = re.compile(rf"[a-z2-7]{{{_ID_LENGTH}}}")
_KEY_RE: Final = re.compile(rf"tmk_([a-z2-7]{{{_ID_LENGTH}}})_([a-z2-7]{{{_SECRET_LENGTH}}})")
_KEY_LENGTH: Final = len(KEY_PREFIX) + _ID_LENGTH + 1 + _SECRET_LENGTH
_HASH_CONTEXT: Final = b"trustmesh gateway api key v1\x00"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,63}")
#: Needs MFA by the declaration's rule, which a key cannot do.
_MFA_ROLE: Final = "admin"


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    key: str = field(repr=False)  # the whole presented key


@dataclass(frozen=True)
class KeyRecord:
    """A stored key: never its secret, only digests. ``previous_hash`` is the secret
    before the last rotation, accepted until ``previous_until``. Times are epoch seconds."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    secret_hash: str = field(repr=False)
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None
    rotated_at: int | None = None
    previous_hash: str | None = field(default=None, repr=False)
    previous_until: int | None = None

    def status(self, now: float) -> str:
        """``active``, ``rotating`` (the old secret still accepted), ``expired`` or
        ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.previous_until is not None and now < self.previous_until:
            return "rotating"
        return "active"


@dataclass(frozen=True)
class IssuedKey:
    """A key just made or rotated: ``key`` is shown once and then only its digest exists."""

    record: KeyRecord
    key: str = field(repr=False)


@dataclass(frozen=True)
class KeyDecision:
    """What a presented key may do on a route. ``key_id`` is set whenever the key was
    well-formed (it is public); ``name`` once the secret matched; ``roles`` and
    ``expires_at`` only when allowed. ``reason`` is one of the ``API_KEY_*`` codes."""

    allowed: bool
    reason: Reason
    key_id: str | None = None
    name: str | None = None
    roles: tuple[str, ...] = ()
    expires_at: int | None = None

    @property
    def principal(self) -> str | None:
        """The consumer policy and rate limits see: ``apikey:<id>``."""
        return principal_of(self.key_id) if self.key_id is not None else None


def principal_of(key_id: str) -> str:
    return f"apikey:{key_id}"


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256 (FIPS 180-4) over a context label and the key,
    hex."""
    return hashlib.sha256(_HASH_CONTEXT + key.encode("ascii")).hexdigest()


def _new_secret(key_id: str) -> str:
    secret = base64.b32encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")
    return f"{KEY_PREFIX}{key_id}_{secret.rstrip('=').lower()}"


def new_key(key_id: str | None = None) -> tuple[str, str]:
    """``(key_id, key)``: a fresh key, under a new id unless ``key_id`` (rotation)."""
    key_id = key_id or _random(_ID_LENGTH)
    return key_id, _new_secret(key_id)


def is_key_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def parse_key(presented: str) -> ParsedKey | None:
    """The presented key's parts, or None when it is not ``tmk_<id>_<secret>``."""
    if len(presented) != _KEY_LENGTH:
        return None
    match = _KEY_RE.fullmatch(presented)
    if match is None:
        return None
    return ParsedKey(match.group(1), presented)


def presented_api_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents in ``Authorization: ApiKey …`` or ``X-API-Key``;
    None when neither is there. Two different keys, or an empty one, give ``""``,
    which :func:`decide` refuses as malformed: a request names one key or none."""
    found: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == API_KEY_HEADER:
            found.add(value.strip())
        elif lowered == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() == API_KEY_SCHEME.encode():
                found.add(rest.strip())
    if not found:
        return None
    if len(found) > 1:
        return ""
    return found.pop().decode("latin-1")


def in_scope(scopes: Collection[str], route_name: str) -> bool:
    return ALL_ROUTES in scopes or route_name in scopes


def _matches(stored: str | None, digest: str) -> bool:
    return stored is not None and hmac.compare_digest(stored.encode(), digest.encode())


def decide(
    record: KeyRecord | None,
    presented: str,
    route_name: str,
    *,
    now: float,
    declared_roles: Collection[str] | None = None,
) -> KeyDecision:
    """May ``presented`` call ``route_name`` at ``now``? ``record`` is the stored key of
    the presented id (None if there is none). The secret is checked first: who does not
    hold it learns nothing about the key. ``declared_roles``, when given, drops roles the
    declaration no longer has."""
    parsed = parse_key(presented)
    if parsed is None:
        return KeyDecision(False, Reason.API_KEY_MALFORMED)
    key_id = parsed.key_id
    if record is None or record.key_id != key_id:
        return KeyDecision(False, Reason.API_KEY_UNKNOWN, key_id)
    digest = hash_key(parsed.key)
    if not _matches(record.secret_hash, digest):
        if _matches(record.previous_hash, digest):
            until = record.previous_until
            if until is None or now >= until:
                return KeyDecision(False, Reason.API_KEY_SUPERSEDED, key_id, record.name)
        else:
            return KeyDecision(False, Reason.API_KEY_INVALID, key_id)
    if record.revoked_at is not None:
        return KeyDecision(False, Reason.API_KEY_REVOKED, key_id, record.name)
    if record.expires_at is not None and now >= record.expires_at:
        return KeyDecision(False, Reason.API_KEY_EXPIRED, key_id, record.name)
    if not in_scope(record.scopes, route_name):
        return KeyDecision(False, Reason.API_KEY_OUT_OF_SCOPE, key_id, record.name)
    roles = record.roles
    if declared_roles is not None:
        roles = tuple(r for r in roles if r in declared_roles)
    return KeyDecision(True, Reason.API_KEY_VALID, key_id, record.name, roles, record.expires_at)


# --- what ``add`` accepts -------------------------------------------------------------


def check_name(name: str) -> str:
    if _NAME_RE.fullmatch(name) is None:
        raise UsageError(
            f"{name!r} is not a key name (expected up to 64 letters, digits, spaces and "
            ". _ : @ / -, starting with a letter or digit)"
        )
    return name


def check_scopes(scopes: Sequence[str], routes: Sequence[GatewayRoute]) -> tuple[str, ...]:
    """The scopes, each a declared route's name (``GatewayRoute.route_name``) or ``*``."""
    if not scopes:
        raise UsageError("a key needs at least one scope (a route name, or '*' for all)")
    known = [r.route_name for r in routes]
    unknown = [s for s in scopes if s != ALL_ROUTES and s not in known]
    if unknown:
        listed = ", ".join(known) if known else "none: the declaration has no gateway routes"
        raise UsageError(
            f"unknown route {', '.join(map(repr, unknown))} (known routes: {listed}; "
            f"or '{ALL_ROUTES}' for all)"
        )
    return tuple(dict.fromkeys(scopes))


def routes_without_api_keys(scopes: Collection[str], routes: Sequence[GatewayRoute]) -> list[str]:
    """The scoped routes whose ``auth`` does not list ``api_key`` (the key is useless
    there until it does)."""
    return [
        r.route_name
        for r in routes
        if (ALL_ROUTES not in scopes and r.route_name in scopes) and "api_key" not in r.auth
    ]


def check_roles(roles: Sequence[str], declared: Collection[str]) -> tuple[str, ...]:
    """The roles the key's principal carries: declared ones (``auth.roles``), never
    ``admin`` (the declaration says admin needs MFA, which a key cannot do)."""
    if _MFA_ROLE in roles:
        raise UsageError(f"a key cannot hold the role {_MFA_ROLE!r} (it always needs MFA)")
    unknown = [r for r in roles if r not in declared]
    if unknown:
        raise UsageError(
            f"unknown role {', '.join(map(repr, unknown))} "
            f"(declared in auth.roles: {', '.join(declared)})"
        )
    return tuple(dict.fromkeys(roles))
