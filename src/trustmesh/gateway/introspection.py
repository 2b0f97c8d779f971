"""Routes with ``auth: [introspection]``: the gateway asks the identity provider about
each bearer token (RFC 7662), over mTLS with its SVID as the managed client
``trustmesh/gateway``, instead of verifying it locally. That covers opaque tokens and
gives revocation at once; the price is a round trip, and no answer while the provider
is down: those routes then answer ``503`` (the ARCHITECTURE's failure table), while
``jwt`` routes keep working on cached keys.

An answer is kept for at most ``cache_seconds`` (1 s), an active one never past the
token's expiry: a flood of made-up tokens costs the provider one question per token per
second at most. The token must be addressed to the gateway, and a
token bound to a certificate (``cnf``) is refused: the client of the edge has none.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from trustmesh.errors import InvalidTokenError
from trustmesh.platform.names import GATEWAY_CLIENT_ID
from trustmesh.reasons import Reason

__all__ = ["Introspector"]


class _Asks(Protocol):
    def __call__(self, token: str, client_id: str) -> Awaitable[dict[str, Any]]: ...


class Introspector:
    def __init__(
        self,
        introspect: _Asks,
        *,
        audience: str,
        client_id: str = GATEWAY_CLIENT_ID,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        self._introspect = introspect
        self.audience = audience
        self.client_id = client_id
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims when the provider says it is active and addressed to the
        gateway; InvalidTokenError otherwise; UnavailableError when the provider does not
        answer."""
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now < cached[0]:
            if cached[1] is None:  # refused a moment ago: not asked again at once
                raise InvalidTokenError("inactive", reason=Reason.TOKEN_INACTIVE)
            return cached[1]
        answer = await self._introspect(token, self.client_id)
        if answer.get("active") is not True:
            self._remember(digest, now + self.cache_seconds, None)
            raise InvalidTokenError(
                "inactive (revoked, expired or unknown)", reason=Reason.TOKEN_INACTIVE
            )
        aud = answer.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.audience not in audiences:
            raise InvalidTokenError(
                "not addressed to the gateway", reason=Reason.TOKEN_WRONG_AUDIENCE
            )
        if "cnf" in answer:
            raise InvalidTokenError("bound to a certificate", reason=Reason.TOKEN_NOT_BOUND)
        exp = answer.get("exp")
        sub = answer.get("sub")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not isinstance(sub, str):
            raise InvalidTokenError(
                "incomplete introspection answer", reason=Reason.TOKEN_MALFORMED
            )
        claims = dict(answer)
        claims.pop("active", None)
        claims.setdefault("client_id", sub)
        claims.setdefault("jti", digest.hex()[:32])
        self._remember(digest, min(now + self.cache_seconds, float(exp)), claims)
        return claims

    def _remember(self, digest: bytes, until: float, claims: dict[str, Any] | None) -> None:
        self._cache[digest] = (until, claims)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
