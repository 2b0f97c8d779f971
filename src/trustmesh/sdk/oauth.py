"""The SDK side of the identity provider, over the wire only (OAuth 2.0 metadata, JWKS,
the token endpoint, the revocation feed): what lets a service verify the tokens it
receives and obtain the ones it sends.

- :class:`AuthClient` talks to the provider over mTLS (its SPIFFE ID is checked);
- :class:`TokenSource` obtains client-credentials tokens per audience, caches them until
  shortly before they expire, and drops them when the SVID rotates (they are bound to
  the certificate);
- :class:`RevocationFeed` keeps a :class:`~trustmesh.sdk.tokens.RevocationList` current
  (token ids, and subjects whose tokens issued before a time are revoked): Redis pub/sub
  when configured (immediate), polling otherwise (every second), both resuming from
  cursors so nothing revoked is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from trustmesh.config import TrustmeshConfig
from trustmesh.errors import AuthenticationError, TrustmeshError, UnavailableError, UsageError
from trustmesh.sdk import store_tls
from trustmesh.sdk.client import ServiceClient, TokenProvider
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import JWKSCache, RevocationList, VerifiedToken

log = logging.getLogger("trustmesh.sdk")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE_URN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
_REFRESH_MARGIN = 0.2  # a token is renewed when a fifth of its life is left


def cache_max_age(cache_control: str | None) -> float | None:
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.isdigit():
            return float(value)
    return None


def jwks_fetcher(client: ServiceClient) -> Callable[[], Awaitable[tuple[bytes, float | None]]]:
    """A :class:`JWKSCache` fetch function for the JWKS at ``client``'s ``/jwks.json``
    (the provider's, the gateway's): the document and how long it may be cached."""

    async def fetch() -> tuple[bytes, float | None]:
        response = await client.get("/jwks.json")
        if response.status != 200:
            raise UnavailableError(f"JWKS: HTTP {response.status}")
        return response.body, cache_max_age(response.headers.get("Cache-Control"))

    return fetch


@dataclass(frozen=True)
class RevocationPage:
    """One answer of the revocation feed: ``revoked`` (jti, exp) after ``cursor``, and
    ``subjects`` (sub, before, exp) after ``subjects_cursor``."""

    cursor: int
    revoked: list[tuple[str, float]]
    subjects_cursor: int
    subjects: list[tuple[str, float, float]]


class AuthClient:
    """The identity provider at ``url``, which must present ``spiffe_id``."""

    def __init__(self, tls: RotatingTLS, url: str, spiffe_id: str) -> None:
        self.tls = tls
        self.url = url.rstrip("/")
        self.spiffe_id = spiffe_id
        self.http = ServiceClient(tls, self.url, spiffe_id, retries=2)
        self.metadata: dict[str, Any] = {}

    async def close(self) -> None:
        await self.http.close()

    async def discover(self) -> dict[str, Any]:
        response = await self.http.get("/.well-known/oauth-authorization-server")
        if response.status != 200:
            raise UnavailableError(f"identity provider metadata: HTTP {response.status}")
        self.metadata = response.json()
        return self.metadata

    @property
    def issuer(self) -> str:
        return str(self.metadata["issuer"])

    async def jwks(self) -> tuple[bytes, float | None]:
        return await jwks_fetcher(self.http)()

    def jwks_cache(self, **kwargs: Any) -> JWKSCache:
        return JWKSCache(self.jwks, **kwargs)

    async def client_credentials(self, client_id: str, audience: str) -> tuple[str, float]:
        """A certificate-bound access token for ``audience``; (token, expires at)."""
        form = {"grant_type": "client_credentials", "client_id": client_id, "audience": audience}
        return await self._token_request(form, audience)

    async def exchange(
        self, client_id: str, subject_token: str, audience: str, scope: str | None = None
    ) -> tuple[str, float]:
        """RFC 8693: trade ``subject_token`` (addressed to this service) for one addressed
        to ``audience``, on behalf of the same subject; (token, expires at)."""
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "client_id": client_id,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE_URN,
            "audience": audience,
        }
        if scope:
            form["scope"] = scope
        return await self._token_request(form, audience)

    async def _token_request(self, form: dict[str, str], audience: str) -> tuple[str, float]:
        response = await self.http.post("/oauth2/token", data=form)
        body = response.json() if response.body.startswith(b"{") else {}
        if response.status != 200 or "access_token" not in body:
            raise AuthenticationError(
                f"token for {audience} refused: {body.get('error', response.status)}"
                f" {body.get('error_description', '')}".rstrip()
            )
        return str(body["access_token"]), time.time() + float(body.get("expires_in", 60))

    async def introspect(self, token: str, client_id: str) -> dict[str, Any]:
        """RFC 7662 §2: what the provider knows of ``token`` (this workload authenticates
        with its SVID as ``client_id``); UnavailableError when it cannot say."""
        response = await self.http.post(
            "/oauth2/introspect",
            data={"token": token, "token_type_hint": "access_token", "client_id": client_id},
        )
        body = response.json() if response.body.startswith(b"{") else None
        if response.status != 200 or not isinstance(body, dict):
            raise UnavailableError(f"introspection: HTTP {response.status}")
        return body

    async def revocations(self, since: int, subjects_since: int = 0) -> RevocationPage:
        """What was revoked after the cursors (token ids, and subjects: tokens for ``sub``
        issued before ``before``)."""
        response = await self.http.get(
            f"/v1/revocations?since={since}&subjects_since={subjects_since}"
        )
        if response.status != 200:
            raise UnavailableError(f"revocation feed: HTTP {response.status}")
        body = response.json()
        return RevocationPage(
            int(body["cursor"]),
            [(str(r["jti"]), float(r["exp"])) for r in body["revoked"]],
            int(body["subjects_cursor"]),
            [(str(r["sub"]), float(r["before"]), float(r["exp"])) for r in body["subjects"]],
        )


class TokenSource:
    """Client-credentials tokens of ``client_id``, one per audience, reused until a fifth
    of their life is left or the SVID they are bound to rotates."""

    def __init__(self, auth: AuthClient, client_id: str) -> None:
        self.auth = auth
        self.client_id = client_id
        self._tokens: dict[str, tuple[str, float, float, int]] = {}  # aud -> token, renew, exp, gen
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetched = 0

    async def token(self, audience: str, *, force: bool = False) -> str:
        lock = self._locks.setdefault(audience, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(audience)
            now = time.time()
            if (
                cached is not None
                and not force
                and now < cached[1]
                and cached[3] == self.auth.tls.generation
            ):
                return cached[0]
            generation = self.auth.tls.generation  # the certificate the token will be bound to
            token, expires = await self.auth.client_credentials(self.client_id, audience)
            self.fetched += 1
            renew = now + (expires - now) * (1 - _REFRESH_MARGIN)
            self._tokens[audience] = (token, renew, expires, generation)
            return token

    async def on_behalf_of(
        self, subject: VerifiedToken, audience: str, *, force: bool = False
    ) -> str:
        """A token for ``audience`` carrying ``subject``'s subject (token exchange), reused
        for the same incoming token while it is fresh and the SVID has not rotated."""
        key = f"{subject.token_hash.hex()} {audience}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            now = time.time()
            generation = self.auth.tls.generation
            if cached and not force and now < cached[1] and cached[3] == generation:
                return cached[0]
            token, expires = await self.auth.exchange(self.client_id, subject.raw, audience)
            self.fetched += 1
            if len(self._tokens) > 10_000:
                self._tokens = {k: v for k, v in self._tokens.items() if v[2] > now}
            self._tokens[key] = (
                token,
                now + (expires - now) * (1 - _REFRESH_MARGIN),
                expires,
                generation,
            )
            return token

    def provider(self, audience: str, on_behalf_of: VerifiedToken | None = None) -> TokenProvider:
        """What a :class:`ServiceClient` calls for the token of each request."""

        async def get(force: bool) -> str:
            if on_behalf_of is not None:
                return await self.on_behalf_of(on_behalf_of, audience, force=force)
            return await self.token(audience, force=force)

        return get


class RevocationFeed:
    """Keeps ``revoked`` current from the provider's feed (and Redis, when given)."""

    def __init__(
        self,
        auth: AuthClient,
        revoked: RevocationList,
        *,
        interval: float = 1.0,
        redis_url: str | None = None,
        redis_channel: str = "",
    ) -> None:
        """``redis_url`` and ``redis_channel``: where the provider pushes revocations
        (the declaration's ``auth.redis`` and ``auth.revocation_channel``)."""
        if redis_url and not redis_channel:
            raise UsageError("a Redis URL for revocations needs the channel they are pushed on")
        self.auth = auth
        self.revoked = revoked
        self.interval = interval
        self.redis_url = redis_url
        self.redis_channel = redis_channel
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.poll_once()
        # with Redis, revocations arrive at once; polling stays as the backstop
        poll_every = self.interval * 10 if self.redis_url else self.interval
        self._tasks.append(asyncio.create_task(self._poll(poll_every), name="tm-revocations"))
        if self.redis_url:
            self._tasks.append(asyncio.create_task(self._subscribe(), name="tm-revocations-redis"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll_once(self) -> None:
        revoked = self.revoked
        page = await self.auth.revocations(revoked.cursor, revoked.subjects_cursor)
        for jti, exp in page.revoked:
            revoked.add(jti, exp)
        for sub, before, exp in page.subjects:
            revoked.add_subject(sub, before, exp)
        revoked.cursor, revoked.subjects_cursor = page.cursor, page.subjects_cursor
        revoked.prune()

    def pushed(self, data: bytes | str) -> None:
        """A revocation pushed through Redis: ``{"jti", "exp"}`` or ``{"sub", "before",
        "exp"}``; anything else is ignored (the feed has it anyway)."""
        try:
            item = json.loads(data)
            if not isinstance(item, dict):
                return
            if "jti" in item:
                self.revoked.add(str(item["jti"]), float(item["exp"]))
            elif "sub" in item:
                self.revoked.add_subject(
                    str(item["sub"]), float(item["before"]), float(item["exp"])
                )
        except (ValueError, KeyError, TypeError):
            return

    async def _poll(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.poll_once()
            except (TrustmeshError, OSError, ValueError, KeyError, TimeoutError) as exc:
                log.warning("revocation feed unavailable (%s); keeping %d", exc, len(self.revoked))

    async def _subscribe(self) -> None:
        import redis.asyncio as redis

        assert self.redis_url is not None  # noqa: S101 - started only with a URL
        while True:
            client = store_tls.redis_client(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.redis_channel)
                    await self.poll_once()  # what was revoked while we were not listening
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.pushed(message["data"])
            except (OSError, redis.RedisError, TrustmeshError) as exc:
                log.warning("revocation channel unavailable (%s); polling meanwhile", exc)
                await asyncio.sleep(self.interval)
            finally:
                await client.aclose()


@dataclass
class ProviderTrust:
    """What a component holds to check the identity provider's tokens: the provider's
    client, the revocation feed that keeps ``revoked`` current, and the provider's keys."""

    auth: AuthClient
    feed: RevocationFeed
    jwks: JWKSCache
    revoked: RevocationList

    @classmethod
    async def connect(
        cls,
        tls: RotatingTLS,
        url: str,
        spiffe_id: str,
        *,
        redis_url: str | None = None,
        redis_channel: str = "",
    ) -> ProviderTrust:
        """Discover the provider at ``url`` (it must present ``spiffe_id``), fetch its
        keys and start following its revocations (pushed on ``redis_channel`` at
        ``redis_url``, when given)."""
        auth = AuthClient(tls, url, spiffe_id)
        try:
            await auth.discover()
            jwks = auth.jwks_cache()
            await jwks.refresh()
            revoked = RevocationList()
            feed = RevocationFeed(auth, revoked, redis_url=redis_url, redis_channel=redis_channel)
            await feed.start()
        except BaseException:
            await auth.close()
            raise
        return cls(auth, feed, jwks, revoked)

    @classmethod
    async def declared(cls, tls: RotatingTLS, url: str, config: TrustmeshConfig) -> ProviderTrust:
        """:meth:`connect` to the declaration's provider at ``url`` (its SPIFFE ID, and
        the Redis channel its revocations are pushed on)."""
        return await cls.connect(
            tls,
            url,
            config.component_spiffe_id("auth"),
            redis_url=config.auth.redis,
            redis_channel=config.auth.revocation_channel,
        )

    async def close(self) -> None:
        await self.feed.close()
        await self.auth.close()
