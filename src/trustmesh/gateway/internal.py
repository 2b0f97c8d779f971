"""The token the upstream gets: short-lived, signed by the gateway's own key, addressed
to exactly that service, carrying only the claims the route maps, ``act`` naming the
gateway (RFC 8693 §4.1), and bound to the gateway's certificate (RFC 8705 §3) — so it is
worth nothing to anyone but the gateway, over the connection it is sent on.

The user's token never travels past the edge. The SDK verifies these tokens like the
provider's, with the gateway's keys (its JWKS) and the gateway as issuer.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustmesh import crypto
from trustmesh.config.gateway import GatewayRoute

__all__ = ["ANONYMOUS", "GatewayKey", "internal_claims"]

ACCESS_JWT_TYP = "at+jwt"  # RFC 9068 §2.1
#: The subject of a request on an anonymous route.
ANONYMOUS = "anonymous"
_CONTEXT = b"trustmesh gateway signing key v1"


def internal_claims(
    *,
    route: GatewayRoute,
    user: Mapping[str, Any] | None,
    issuer: str,
    audience: str,
    thumbprint: str,
    now: int,
    ttl: int,
    jti: str | None = None,
) -> dict[str, Any]:
    """The internal token's claims. ``user``: the verified claims of the caller's token
    (None on an anonymous route); another issuer's come namespaced and filtered
    (:func:`trustmesh.gateway.oidc.vouched_claims`: no ``act`` of its own making, no claim
    it alone vouches for). The token never outlives the user's."""
    exp = now + ttl
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "iat": now}
    if user is None:
        claims.update(sub=ANONYMOUS, client_id=ANONYMOUS)
    else:
        claims.update(sub=user["sub"], client_id=user.get("client_id", ANONYMOUS))
        exp = min(exp, int(user["exp"]))
        for name in route.claims:
            if name in user:
                claims[name] = user[name]
    actor: dict[str, Any] = {"sub": issuer}
    if user is not None and isinstance(user.get("act"), dict):
        actor["act"] = user["act"]  # the chain so far, newest first
    claims.update(
        exp=exp,
        jti=jti or base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(),
        act=actor,
        cnf={"x5t#S256": thumbprint},
    )
    return claims


@dataclass(frozen=True)
class GatewayKey:
    """The gateway's ES256 signing key: sealed at rest under ``<state>/gateway/``."""

    key: crypto.PrivateKey
    kid: str

    @classmethod
    def load_or_create(cls, state: Path, seal_key: crypto.SealKey) -> GatewayKey:
        path = state / "gateway" / "signing-key.sealed"
        key = crypto.load_or_create_sealed_key(path, seal_key, context=_CONTEXT)
        return cls(key, crypto.key_id(key.public_key()))

    def jwks(self) -> bytes:
        """The public JWKS the services fetch (RFC 7517 §5)."""
        jwk = crypto.public_jwk(self.key.public_key())
        jwk.update(kid=self.kid, alg="ES256", use="sig")
        return json.dumps({"keys": [jwk]}, separators=(",", ":")).encode()

    def sign(self, claims: Mapping[str, Any]) -> str:
        return crypto.sign_jwt(claims, self.key, kid=self.kid, typ=ACCESS_JWT_TYP)
