"""Access tokens from other OpenID Providers (Keycloak, Entra ID, Auth0, …) on ``jwt``
routes: each issuer in ``gateway.issuers`` is found through OpenID Connect Discovery
1.0 (§4: ``<issuer>/.well-known/openid-configuration``; §4.3: the document's ``issuer``
must be exactly the one configured) and its tokens are verified with its JWKS (RFC 7517):

* the header's ``alg`` must be one the issuer is configured for — never ``none`` or an
  HMAC algorithm (RFC 8725 §3.1: no algorithm confusion with a public key), and the key
  must be of that algorithm's type; headers that point at other keys (``jku``, ``x5u``,
  ``jwk``…) are refused, as for the provider's tokens;
* ``iss`` exactly, ``aud`` containing the configured audience, ``exp`` (and ``nbf``,
  ``iat``) with ``auth.token_leeway`` (5 s by default), ``sub`` present (RFC 9068 §4 where the issuer follows it);
* an unknown ``kid`` triggers one refetch of the JWKS, at most every 10 s whatever the
  traffic; a failed fetch keeps the keys known (tokens keep working while it is down);
* a verified token is cached until it expires.

Kept apart from the provider's users and from each other — the verified token is turned
into the claims the gateway vouches for (:func:`vouched_claims`), and nothing else of it
reaches a policy or an upstream:

* every name is namespaced: ``sub``, ``client_id`` (or ``azp``), ``preferred_username``
  and ``email`` become ``<issuer>#<value>`` (and ``idp`` names the issuer), so no issuer
  can mint a token for a local user or client, or for another issuer's;
* the principal's type is the declaration's (``principal``: Client unless declared
  users), never the token's say (``preferred_username``, ``auth_time``); its policy
  attribute ``issuer`` is the issuer's URL;
* of the issuer's roles (``roles_claim``, a dotted path such as ``realm_access.roles``),
  only those its ``roles`` allow (default: every declared role but ``admin``) become the
  ``roles`` claim the gateway's policies and routes see; likewise ``groups`` (from
  ``groups_claim``) and ``scope``, of which none are taken unless declared; ``amr`` (and
  so ``mfa``) only with ``trust_amr``;
* every other claim — ``act`` (a delegation chain of the issuer's making), ``cnf``,
  ``auth_time``, custom claims a route maps — is dropped;
* ID tokens are not access tokens (OIDC Core §2; RFC 9068 §4): a token carrying
  ``nonce``, ``at_hash`` or ``c_hash``, or typed ``ID`` (Keycloak), is refused, as is a
  header ``typ`` other than ``at+jwt`` or ``JWT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from trustmesh.config.gateway import ExternalIssuer
from trustmesh.crypto import (
    Expect,
    unverified_header,
    unverified_issuer,
    verify_jwt,
    verifying_keys,
)
from trustmesh.errors import InvalidTokenError, UnavailableError
from trustmesh.policy.edge import Principal
from trustmesh.reasons import Reason
from trustmesh.sdk.oauth import cache_max_age
from trustmesh.sdk.tokens import DEFAULT_LEEWAY, JWKSCache

__all__ = [
    "ExternalIssuers",
    "ExternalVerifier",
    "http_fetcher",
    "vouched_claims",
]

_ACCESS_TYPES: Final = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_ID_TOKEN_CLAIMS: Final = frozenset({"nonce", "at_hash", "c_hash"})
_MAX_DOCUMENT: Final = 1 << 20
LEEWAY: Final = DEFAULT_LEEWAY

#: GET ``url``; the body and its max-age (seconds) when the response says one.
Fetch = Callable[[str], Awaitable[tuple[bytes, float | None]]]


def http_fetcher(
    ca_file: Path | None, *, timeout: float = 5.0
) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    """A fetch function over HTTPS (the system's trust store, or ``ca_file``), no
    redirects, documents up to 1 MiB; and a function that closes its session."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    session: aiohttp.ClientSession | None = None

    async def fetch(url: str) -> tuple[bytes, float | None]:
        nonlocal session
        if not url.startswith("https://"):
            raise UnavailableError(f"{url[:80]!r} is not an https URL")
        if session is None:
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout),
                connector=aiohttp.TCPConnector(ssl=context, limit=4),
            )
        try:
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise UnavailableError(f"{url}: HTTP {response.status}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > _MAX_DOCUMENT:
                        raise UnavailableError(f"{url}: larger than {_MAX_DOCUMENT} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
                return body, cache_max_age(response.headers.get("Cache-Control"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UnavailableError(f"{url}: {type(exc).__name__}") from None

    async def close() -> None:
        if session is not None:
            await session.close()

    return fetch, close


class ExternalVerifier:
    """One external issuer: discovered once (retried at most every 10 s until it
    answers), its tokens verified per the module docstring."""

    def __init__(
        self,
        spec: ExternalIssuer,
        fetch: Fetch,
        *,
        declared_roles: Sequence[str] = (),
        leeway: float = LEEWAY,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cache_size: int = 10_000,
    ) -> None:
        self.spec = spec
        self.allowed_roles = frozenset(
            spec.roles if spec.roles is not None else (r for r in declared_roles if r != "admin")
        )
        self._fetch = fetch
        self.leeway = leeway
        self._clock = clock
        self._monotonic = monotonic
        self.jwks: JWKSCache | None = None
        self._tried_at: float | None = None
        self._cache: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size

    async def discover(self) -> None:
        """Read the issuer's metadata and its keys; raise UnavailableError when it cannot."""
        self._tried_at = self._monotonic()
        url = self.spec.issuer.rstrip("/") + "/.well-known/openid-configuration"
        body, _ = await self._fetch(url)
        try:
            metadata = json.loads(body)
        except ValueError:
            raise UnavailableError(f"{url}: not JSON") from None
        if not isinstance(metadata, dict) or metadata.get("issuer") != self.spec.issuer:
            # OIDC Discovery §4.3: a document for another issuer is not this one's
            raise UnavailableError(f"{url}: names another issuer")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise UnavailableError(f"{url}: no https jwks_uri")
        algorithms = tuple(self.spec.algorithms)

        async def fetch_keys() -> tuple[bytes, float | None]:
            return await self._fetch(jwks_uri)

        cache = JWKSCache(
            fetch_keys,
            clock=self._monotonic,
            loader=lambda document: verifying_keys(document, algorithms),
        )
        await cache.refresh()
        self.jwks = cache

    async def verify(self, token: str) -> dict[str, Any]:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        claims = self._cache.get(digest)
        if claims is None:
            claims = await self._verify(token, digest)
            self._cache[digest] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if self._clock() >= claims["exp"] + self.leeway:
            self._cache.pop(digest, None)
            raise _refuse(Reason.TOKEN_EXPIRED, "expired")
        return claims

    @property
    def _expect(self) -> Expect:
        """An access token of this issuer for the audience the declaration names (a
        ``typ``, if it says one, of an access token)."""
        return Expect(
            issuer=self.spec.issuer,
            audience=self.spec.audience,
            typ=_ACCESS_TYPES,
            typ_optional=True,
            algorithms=tuple(self.spec.algorithms),
            required=("iss", "aud", "exp", "sub"),
            strings=("sub",),
            leeway=self.leeway,
        )

    async def _verify(self, token: str, digest: bytes) -> dict[str, Any]:
        header = unverified_header(token, self.spec.algorithms)
        if self.jwks is None:
            tried = self._tried_at
            if tried is None or self._monotonic() - tried >= 10.0:
                with contextlib.suppress(UnavailableError):
                    await self.discover()
            if self.jwks is None:
                raise UnavailableError(f"issuer {self.spec.issuer} has not answered discovery")
        key = await self.jwks.key(header["kid"])
        if key is None:
            raise _refuse(Reason.TOKEN_UNKNOWN_KEY, "unknown key id")
        claims = verify_jwt(token, {header["kid"]: key}, self._expect, now=self._clock())
        if _ID_TOKEN_CLAIMS & claims.keys() or claims.get("typ") == "ID":
            raise _refuse(Reason.TOKEN_MALFORMED, "an ID token, not an access token")
        return vouched_claims(claims, self.spec, self.allowed_roles, digest)

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """The edge policies' principal for claims :meth:`verify` returned: of the type
        the declaration gives this issuer's tokens, with ``issuer`` its URL."""
        kind = "User" if self.spec.principal == "user" else "Client"
        return Principal.from_claims(claims, issuer=self.spec.issuer, kind=kind)


#: Another issuer's claims that name someone: taken as ``<issuer>#<value>``.
_NAMESPACED: Final = ("preferred_username", "email")


def vouched_claims(
    claims: Mapping[str, Any], spec: ExternalIssuer, roles: frozenset[str], digest: bytes
) -> dict[str, Any]:
    """What the gateway takes from another issuer's verified token (``claims``), as the
    module docstring lists: names namespaced, roles, groups, scopes and ``amr`` only as
    ``spec`` allows (``roles``: the roles it may grant), nothing else."""
    issuer = spec.issuer
    client = claims.get("client_id") or claims.get("azp")
    jti = claims.get("jti")
    vouched: dict[str, Any] = {
        "iss": issuer,
        "idp": issuer,
        "sub": f"{issuer}#{claims['sub']}",
        "client_id": f"{issuer}#{client if isinstance(client, str) else claims['sub']}",
        "exp": claims["exp"],
        "jti": jti if isinstance(jti, str) and jti else digest.hex()[:32],
        "roles": _kept(_at(claims, spec.roles_claim), roles),
        "groups": _kept(_at(claims, spec.groups_claim), frozenset(spec.groups)),
    }
    for name in ("iat", "nbf"):
        if isinstance(claims.get(name), int | float):
            vouched[name] = claims[name]
    for name in _NAMESPACED:
        value = claims.get(name)
        if isinstance(value, str) and value:
            vouched[name] = f"{issuer}#{value}"
    scope = claims.get("scope")
    if isinstance(scope, str) and (kept := _kept(scope.split(), frozenset(spec.scopes))):
        vouched["scope"] = " ".join(kept)
    if spec.trust_amr:
        vouched["amr"] = _kept(claims.get("amr"), None)
    return vouched


def _kept(values: object, allowed: frozenset[str] | None) -> list[str]:
    """The strings of a claim's list that ``allowed`` holds (any string, when None)."""
    if not isinstance(values, list):
        return []
    return sorted({v for v in values if isinstance(v, str) and (allowed is None or v in allowed)})


def _at(claims: Mapping[str, Any], path: str) -> object:
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _refuse(reason: Reason, detail: str) -> InvalidTokenError:
    return InvalidTokenError(detail, reason=reason)


class ExternalIssuers:
    """Every external issuer, by its identifier: a token is sent to the issuer it names,
    whose keys alone can vouch for it."""

    def __init__(
        self,
        verifiers: Sequence[ExternalVerifier],
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.by_issuer = {v.spec.issuer: v for v in verifiers}
        self._closers = tuple(closers)

    @classmethod
    async def start(
        cls,
        specs: Sequence[ExternalIssuer],
        config_dir: Path,
        declared_roles: Sequence[str],
        *,
        leeway: float = LEEWAY,
    ) -> ExternalIssuers:
        verifiers: list[ExternalVerifier] = []
        closers: list[Callable[[], Awaitable[None]]] = []
        for spec in specs:
            fetch, close = http_fetcher(config_dir / spec.ca_file if spec.ca_file else None)
            verifier = ExternalVerifier(spec, fetch, declared_roles=declared_roles, leeway=leeway)
            with contextlib.suppress(UnavailableError):  # retried when a token names it;
                await verifier.discover()  # until then its tokens get 503
            verifiers.append(verifier)
            closers.append(close)
        return cls(verifiers, closers)

    def issuer_of(self, token: str) -> ExternalVerifier | None:
        issuer = unverified_issuer(token)
        return self.by_issuer.get(issuer) if issuer is not None else None

    async def close(self) -> None:
        for close in self._closers:
            await close()
