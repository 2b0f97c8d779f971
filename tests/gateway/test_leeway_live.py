"""Token expiry leeway, live: the gateway (the provider's tokens), a service (the
gateway's internal tokens) and the provider (a gateway token offered in exchange) take
an expired token only within ``auth.token_leeway`` — 5 s unless declared otherwise."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from authrig import ORDERS
from liverig import GATEWAY, SECTION, Stack, live_identity, open_stack

from trustmesh import crypto
from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


def provider_token(stack: Stack, *, expired_for: int) -> str:
    """A token for the gateway, signed with the provider's active key, that expired
    ``expired_for`` seconds ago."""
    service = stack.rig.auth.service
    assert service.ring.active is not None
    kid = service.ring.active.kid
    now = int(time.time())
    claims = {
        "iss": service.settings.issuer,
        "sub": "a-user",
        "aud": GATEWAY,
        "iat": now - 600,
        "exp": now - expired_for,
        "jti": os.urandom(8).hex(),
        "client_id": "shop-web",
    }
    return crypto.sign_jwt(claims, service.ring.private[kid], kid=kid, typ="at+jwt")


def internal_token(stack: Stack, *, expired_for: int) -> str:
    """An internal token for orders, signed with the gateway's key and bound to the
    gateway's certificate, that expired ``expired_for`` seconds ago."""
    now = int(time.time())
    claims = {
        "iss": GATEWAY,
        "sub": "a-user",
        "aud": ORDERS,
        "iat": now - 60,
        "exp": now - expired_for,
        "jti": os.urandom(8).hex(),
        "client_id": "shop-web",
        "act": {"sub": GATEWAY},
        "cnf": {"x5t#S256": stack.gateway_tls.thumbprint},
    }
    return stack.gateway.key.sign(claims)


async def statuses(stack: Stack, expired_for: int) -> tuple[int, int]:
    """(at the gateway, at the service) for tokens expired ``expired_for`` seconds ago."""
    at_gateway = await stack.status(provider_token(stack, expired_for=expired_for))
    internal = internal_token(stack, expired_for=expired_for)
    return at_gateway, await stack.internal_status(f"Bearer {internal}")


async def test_a_token_expired_20_s_ago_is_refused_3_s_ago_taken(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with open_stack(identity, short_tmp) as stack:
        assert await statuses(stack, 20) == (401, 401)
        assert Reason.TOKEN_EXPIRED in [e.reason for e in stack.sink.events]
        assert await statuses(stack, 3) == (200, 200)
        # nor does the provider trade one (RFC 8693) for a fresh token

        def exchange() -> requests.Response:
            with stack.rig.orders.mount(requests.Session()) as s:
                return s.post(
                    stack.rig.url + "/oauth2/token",
                    data={
                        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                        "client_id": "orders",
                        "subject_token": internal_token(stack, expired_for=20),
                        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                        "audience": "payments",
                    },
                    timeout=30,
                )

        refused = await asyncio.to_thread(exchange)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_grant"


async def test_the_declared_leeway_is_honoured(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with open_stack(identity, short_tmp, "auth: {token_leeway: 25s}\n") as stack:
        assert await statuses(stack, 20) == (200, 200)
        assert await statuses(stack, 30) == (401, 401)
