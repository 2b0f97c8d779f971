"""Token exchange (RFC 8693) with a subject token the gateway signed: a service that got
a request through the gateway trades the gateway's internal token for one addressed to
the next service, on behalf of the same user, as it would a token of this provider.

The gateway's keys are fetched from its mTLS listener (``TRUSTMESH_GATEWAY_URL``, else the
endpoint file ``trustmesh up`` has it write: :func:`trustmesh.platform.endpoints.peer_url`;
its SPIFFE ID checked on every connection), cached, and refetched once for an unknown key id. A
gateway token is accepted only as a subject token — never at introspection, revocation,
userinfo or the admin API — and only when the gateway is declared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trustmesh.crypto import Expect, unverified_header, verify_jwt
from trustmesh.errors import InvalidTokenError, UnavailableError
from trustmesh.platform.endpoints import peer_url
from trustmesh.reasons import Reason
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.oauth import jwks_fetcher
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import ACCESS_TOKEN_TYPES, JWKSCache

__all__ = ["GatewayTokens", "gateway_url_from"]


def gateway_url_from(state: Path) -> Callable[[], str | None]:
    """The gateway's mTLS URL, looked up when needed (it may start after the provider)."""
    return lambda: peer_url(state, "gateway")


class GatewayTokens:
    def __init__(
        self,
        issuer: str,
        tls: RotatingTLS,
        locate: Callable[[], str | None],
        *,
        leeway: int,
        clock: Callable[[], float],
    ) -> None:
        self.issuer = issuer
        self.clock = clock
        self.leeway = leeway  # auth.token_leeway: the gateway's clock may differ
        self._tls = tls
        self._locate = locate
        self._client: ServiceClient | None = None
        self._keys: JWKSCache | None = None

    def _cache(self) -> JWKSCache:
        if self._keys is not None:
            return self._keys
        url = self._locate()
        if url is None:
            raise UnavailableError("the gateway is not running")
        self._client = ServiceClient(self._tls, url, self.issuer, retries=1)
        self._keys = JWKSCache(jwks_fetcher(self._client))
        return self._keys

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a live token the gateway signed (any audience: the grant checks
        it names the client that trades it); InvalidTokenError otherwise."""
        header = unverified_header(token)
        key = await self._cache().key(header["kid"])
        if key is None:
            raise InvalidTokenError("unknown key id", reason=Reason.TOKEN_UNKNOWN_KEY)
        expect = Expect(
            issuer=self.issuer,
            typ=ACCESS_TOKEN_TYPES,
            required=("iss", "aud", "exp", "iat", "sub", "jti"),
            leeway=self.leeway,
        )
        return verify_jwt(token, {header["kid"]: key}, expect, now=self.clock())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
