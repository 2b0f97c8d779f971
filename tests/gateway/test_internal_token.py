"""The internal token: what the upstream may believe of a request that came through the
gateway — verified here by the SDK's own verifier, with the gateway as issuer."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from trustmesh import crypto
from trustmesh.config.gateway import GatewayRoute
from trustmesh.errors import InvalidTokenError
from trustmesh.gateway.internal import ANONYMOUS, GatewayKey, internal_claims
from trustmesh.reasons import Reason
from trustmesh.sdk.tokens import JWKSCache, TokenVerifier

GATEWAY = "spiffe://shop.example/trustmesh/gateway"
ORDERS = "spiffe://shop.example/orders"
THUMB = "t" * 43
ROUTE = GatewayRoute(path="/orders", to="orders", claims=["roles", "email"])
USER = {
    "iss": "https://127.0.0.1:9443",
    "sub": "u_alice",
    "aud": GATEWAY,
    "exp": 2_000_000_600,
    "client_id": "shop-web",
    "roles": ["customer"],
    "email": "alice@shop.example",
    "phone": "+1 555 0100",
    "amr": ["pwd"],
}


@pytest.fixture
def key(tmp_path: Path) -> GatewayKey:
    return GatewayKey.load_or_create(tmp_path, crypto.load_seal_key(tmp_path, dev=True))


def test_only_the_mapped_claims_cross_and_the_gateway_is_the_actor() -> None:
    claims = internal_claims(
        route=ROUTE,
        user=USER,
        issuer=GATEWAY,
        audience=ORDERS,
        thumbprint=THUMB,
        now=2_000_000_000,
        ttl=60,
    )
    assert claims["sub"] == "u_alice"
    assert claims["aud"] == ORDERS
    assert claims["iss"] == GATEWAY
    assert claims["roles"] == ["customer"]
    assert claims["email"] == "alice@shop.example"
    assert "phone" not in claims  # not mapped by the route
    assert "amr" not in claims
    assert claims["act"] == {"sub": GATEWAY}
    assert claims["cnf"] == {"x5t#S256": THUMB}
    assert claims["exp"] == 2_000_000_060
    # never outlives the user's token
    late = internal_claims(
        route=ROUTE,
        user=USER,
        issuer=GATEWAY,
        audience=ORDERS,
        thumbprint=THUMB,
        now=2_000_000_590,
        ttl=60,
    )
    assert late["exp"] == USER["exp"]
    anonymous = internal_claims(
        route=ROUTE,
        user=None,
        issuer=GATEWAY,
        audience=ORDERS,
        thumbprint=THUMB,
        now=2_000_000_000,
        ttl=60,
    )
    assert anonymous["sub"] == ANONYMOUS
    assert "roles" not in anonymous


async def test_the_sdk_verifies_it_with_the_gateways_keys(key: GatewayKey) -> None:
    now = int(time.time())
    user = {**USER, "exp": now + 900}
    token = key.sign(
        internal_claims(
            route=ROUTE,
            user=user,
            issuer=GATEWAY,
            audience=ORDERS,
            thumbprint=THUMB,
            now=now,
            ttl=60,
        )
    )

    async def fetch() -> tuple[bytes, float | None]:
        return key.jwks(), 300.0

    verifier = TokenVerifier(audience=ORDERS, trusted={GATEWAY: JWKSCache(fetch)})
    verified = await verifier.verify(token, peer_thumbprint=THUMB)
    assert verified.subject == "u_alice"
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    # over another connection than the gateway's: refused
    with pytest.raises(InvalidTokenError) as caught:
        await verifier.verify(token, peer_thumbprint="x" * 43)
    assert caught.value.reason == Reason.TOKEN_NOT_BOUND
    # addressed to another service: refused there
    other = TokenVerifier(
        audience="spiffe://shop.example/payments", trusted={GATEWAY: JWKSCache(fetch)}
    )
    with pytest.raises(InvalidTokenError) as caught:
        await other.verify(token, peer_thumbprint=THUMB)
    assert caught.value.reason == Reason.TOKEN_WRONG_AUDIENCE


def test_the_signing_key_is_kept_sealed(tmp_path: Path) -> None:
    seal_key = crypto.load_seal_key(tmp_path, dev=True)
    first = GatewayKey.load_or_create(tmp_path, seal_key)
    again = GatewayKey.load_or_create(tmp_path, seal_key)
    assert again.kid == first.kid
    stored = tmp_path / "gateway" / "signing-key.sealed"
    assert crypto.is_sealed(stored.read_bytes())
    assert stored.stat().st_mode & 0o077 == 0
    assert b'"d"' not in first.jwks()  # public half only
