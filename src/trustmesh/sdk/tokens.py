"""Access-token verification for services: what the middleware checks on every request.

Speaks only the wire protocols (JWKS, RFC 9068 access tokens, RFC 8705 binding), so the
provider behind it can be trustmesh's or Keycloak's. The JOSE work is PyJWT's; this
module decides what is acceptable:

- the JWS: compact form only; ``alg`` exactly one of the allow-list (``ES256``) — never
  ``none`` or an HMAC with a public key; no ``jku``/``x5u``/``jwk``/``x5c`` (nothing is
  ever fetched from or trusted in a token) and no ``crit``; ``kid`` is only a dictionary
  key, never a path or a query;
- the key: from the provider's JWKS only — EC P-256, ``alg`` ES256 if stated, ``use``
  ``sig`` if stated, ``key_ops`` with ``verify`` if stated, a valid point, no private
  part, no duplicate ``kid``; an unknown ``kid`` triggers one rate-limited refetch;
- the claims: ``typ`` ``at+jwt``; ``iss`` one of the configured issuers; ``aud`` this
  service; ``exp``/``nbf``/``iat`` with a small leeway (5 s by default); ``sub``, ``jti``,
  ``client_id`` present; ``cnf.x5t#S256`` equal to the mTLS peer's certificate; not
  revoked — neither its ``jti`` nor its subject since before its ``iat``.

A verifier built with test-only switches (``defences_off``: ``token-signature``,
``token-algorithms``, ``token-audience``, ``token-binding``, honoured only where
:mod:`trustmesh.config.switches` allows) skips those checks: decided when it is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trustmesh.crypto import (
    ALLOWED_ALGORITHMS,
    Expect,
    unsigned_claims,
    unverified_header,
    unverified_issuer,
    verify_jwt,
    verifying_keys,
)
from trustmesh.errors import InvalidTokenError, TrustmeshError
from trustmesh.reasons import Reason

log = logging.getLogger("trustmesh.sdk")

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
#: Seconds a token is still taken past its ``exp`` (before its ``nbf``/``iat``), for
#: clocks that differ; the declaration's ``auth.token_leeway`` sets it (≤ 30 s).
DEFAULT_LEEWAY = 5.0

PublicKey = Any  # what PyJWT's PyJWK.key holds for an EC key


def bearer_token(value: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1; the
    scheme is case-insensitive), or None when there is none."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text[:7].lower() != "bearer ":
        return None
    return text[7:].strip() or None


def _refuse(reason: Reason, message: str) -> InvalidTokenError:
    return InvalidTokenError(message, reason=reason)


class JWKSCache:
    """The provider's keys, refreshed when they age (the response's max-age, clamped) and
    once — rate-limited — when a token names a key not in the set. A failed fetch keeps
    the keys already known: verification goes on while the provider is down."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[bytes, float | None]]],
        *,
        max_age: float = 300.0,
        min_refetch_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[bytes], dict[str, PublicKey]] = verifying_keys,
    ) -> None:
        self._fetch = fetch
        self._load = loader
        self.max_age = max_age
        self.min_refetch_interval = min_refetch_interval
        self._clock = clock
        self.keys: dict[str, PublicKey] = {}
        self._fetched_at: float | None = None
        self._unknown_refetch_at: float | None = None
        self._ttl = max_age
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def refresh(self) -> None:
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        self._fetched_at = self._clock()
        self.fetches += 1
        try:
            body, max_age = await self._fetch()
        except (TrustmeshError, OSError, TimeoutError, ValueError) as exc:  # provider down:
            # keep verifying with the keys we have
            log.warning(
                "JWKS fetch failed (%s); keeping %d known keys", type(exc).__name__, len(self.keys)
            )
            return
        keys = self._load(body)
        if keys or not self.keys:
            self.keys = keys
        self._ttl = min(max(max_age if max_age is not None else self.max_age, 1.0), self.max_age)

    async def key(self, kid: str) -> PublicKey | None:
        now = self._clock()
        fetched = self._fetched_at
        if fetched is None or now - fetched >= self._ttl:
            async with self._lock:
                if self._fetched_at == fetched:
                    await self._refresh()
        key = self.keys.get(kid)
        if key is not None:
            return key
        async with self._lock:  # one refetch per interval, whatever the traffic
            key = self.keys.get(kid)
            last = self._unknown_refetch_at
            if key is None and (last is None or self._clock() - last >= self.min_refetch_interval):
                self._unknown_refetch_at = self._clock()
                await self._refresh()
                key = self.keys.get(kid)
        return key


class RevocationList:
    """What the provider revoked, each until every token it can match has expired:
    token ids (``jti``), and subjects — every token for ``sub`` issued (``iat``) before
    ``before``, whoever signed it. ``cursor`` and ``subjects_cursor`` are where the feed
    resumes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._revoked: dict[str, float] = {}
        self._subjects: dict[str, tuple[float, float]] = {}  # sub -> (before, exp)
        self._clock = clock
        self.cursor = 0
        self.subjects_cursor = 0

    def add(self, jti: str, exp: float) -> None:
        self._revoked[jti] = exp

    def add_subject(self, sub: str, before: float, exp: float) -> None:
        """Tokens for ``sub`` issued before ``before`` are revoked (until ``exp``); a
        later revocation of the same subject only extends it."""
        held = self._subjects.get(sub)
        if held is not None:
            before, exp = max(before, held[0]), max(exp, held[1])
        self._subjects[sub] = (before, exp)

    def __contains__(self, jti: object) -> bool:
        return isinstance(jti, str) and jti in self._revoked

    def revokes(self, claims: Mapping[str, Any]) -> bool:
        """Whether a verified token with ``claims`` is revoked: by its ``jti``, or by a
        revocation of its subject made after it was issued (an ``iat`` in the same second
        counts as before: fail closed)."""
        if claims.get("jti") in self:
            return True
        sub = claims.get("sub")
        held = self._subjects.get(sub) if isinstance(sub, str) else None
        if held is None:
            return False
        iat = claims.get("iat")
        return isinstance(iat, bool) or not isinstance(iat, int | float) or iat < held[0]

    def prune(self) -> None:
        now = self._clock()
        self._revoked = {j: e for j, e in self._revoked.items() if e > now}
        self._subjects = {s: v for s, v in self._subjects.items() if v[1] > now}

    def __len__(self) -> int:
        return len(self._revoked) + len(self._subjects)


@dataclass(frozen=True)
class VerifiedToken:
    claims: dict[str, Any]
    token_hash: bytes
    #: The token as received: what an on-behalf-of call exchanges (never logged).
    raw: str = field(repr=False, default="")

    @property
    def actor(self) -> str | None:
        """Who passed the token on most recently (RFC 8693 ``act.sub``), if anyone."""
        act = self.claims.get("act")
        return str(act["sub"]) if isinstance(act, dict) and "sub" in act else None

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    @property
    def client_id(self) -> str:
        return str(self.claims["client_id"])

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])

    @property
    def scopes(self) -> frozenset[str]:
        scope = self.claims.get("scope")
        return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


class TokenVerifier:
    """Verifies bearer access tokens addressed to ``audience``; verified tokens are
    cached until they expire (the binding, revocation and expiry are checked every time).

    Each trusted issuer has its own keys: ``issuers`` share ``jwks`` (one provider under
    several names), and ``trusted`` adds issuers with keys of their own (the gateway). A
    token's keys are looked up only among its own issuer's, so one issuer's key can
    never vouch for a token that names another (issuer confusion)."""

    def __init__(
        self,
        *,
        audience: str,
        issuers: Iterable[str] = (),
        jwks: JWKSCache | None = None,
        trusted: Mapping[str, JWKSCache] | None = None,
        revoked: RevocationList | None = None,
        leeway: float = DEFAULT_LEEWAY,
        require_binding: bool = True,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        defences_off: Collection[str] = (),
    ) -> None:
        """``defences_off``: test-only switches (see the module docstring); empty in
        every real stack."""
        self._keys: dict[str, JWKSCache] = {}
        if jwks is not None:
            self._keys.update(dict.fromkeys(issuers, jwks))
        self._keys.update(trusted or {})
        if not self._keys:
            raise ValueError("a token verifier needs at least one issuer and its keys")
        self.audience = audience
        self.revoked = revoked if revoked is not None else RevocationList(clock)
        self.leeway = leeway
        self.require_binding = require_binding
        self._clock = clock
        self._cache: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self._cache_size = cache_size
        #: the algorithms a test switch takes unsigned (none in a real stack)
        self._unsigned = (ALLOWED_ALGORITHMS if "token-signature" in defences_off else ()) + (
            ("none",) if "token-algorithms" in defences_off else ()
        )
        self._audience_checked = "token-audience" not in defences_off
        self._binding_checked = "token-binding" not in defences_off

    async def verify(self, token: str, *, peer_thumbprint: str | None) -> VerifiedToken:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        verified = self._cache.get(digest)
        if verified is None:
            verified = await self._verify(token, digest)
            self._cache[digest] = verified
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        claims = verified.claims
        if self._clock() >= claims["exp"] + self.leeway:
            self._cache.pop(digest, None)
            raise _refuse(Reason.TOKEN_EXPIRED, "expired")
        if self._binding_checked and (self.require_binding or "cnf" in claims):
            cnf = claims.get("cnf")
            bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
            if not isinstance(bound, str) or bound != peer_thumbprint:
                raise _refuse(Reason.TOKEN_NOT_BOUND, "token is bound to another certificate")
        if self.revoked.revokes(claims):
            raise _refuse(Reason.TOKEN_REVOKED, "token revoked")
        return verified

    def _expect(self, issuer: str) -> Expect:
        """RFC 9068: an access token of ``issuer`` for this service."""
        return Expect(
            issuer=issuer,
            audience=self.audience if self._audience_checked else None,
            typ=ACCESS_TOKEN_TYPES,
            required=("iss", "aud", "exp", "iat", "sub", "jti", "client_id"),
            strings=("sub", "jti", "client_id"),
            leeway=self.leeway,
        )

    async def _verify(self, token: str, digest: bytes) -> VerifiedToken:
        if self._unsigned:  # test-only switches
            claims = self._taken_unsigned(token)
            if claims is not None:
                return VerifiedToken(claims, digest, token)
        header = unverified_header(token)
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise _refuse(Reason.TOKEN_MALFORMED, "not an access token (typ)")
        issuer = unverified_issuer(token)
        if issuer is None:
            raise _refuse(Reason.TOKEN_MALFORMED, "no issuer")
        keys = self._keys.get(issuer)
        if keys is None:
            raise _refuse(Reason.TOKEN_WRONG_ISSUER, "wrong issuer")
        key = await keys.key(header["kid"])
        if key is None:
            raise _refuse(Reason.TOKEN_UNKNOWN_KEY, "unknown key id")
        claims = verify_jwt(token, {header["kid"]: key}, self._expect(issuer), now=self._clock())
        return VerifiedToken(claims, digest, token)

    def _taken_unsigned(self, token: str) -> dict[str, Any] | None:
        """Under ``token-signature``/``token-algorithms`` only: the claims of a token
        whose header names an algorithm those take unsigned, checked as any token's but
        for its signature (None: verify it as usual)."""
        issuer = unverified_issuer(token)
        if issuer is None or issuer not in self._keys:
            return None  # refused as usual
        expect = replace(self._expect(issuer), algorithms=self._unsigned)
        return unsigned_claims(token, expect, now=self._clock())
