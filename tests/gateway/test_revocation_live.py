"""Revocation reaches every token it should, end to end: a user's tokens through the
gateway, the internal token the gateway minted for them, and the token a service got in
exchange for it — each refused, within the documented time, once what it came from is
revoked (a refresh family whose token was replayed or revoked; a user locked, their MFA
reset or their password changed). A token issued after the revocation works."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from liverig import (
    POLL_BOUND,
    PUSH_BOUND,
    SECTION,
    Stack,
    live_identity,
    open_stack,
    within,
)

from trustmesh import crypto
from trustmesh.platform.names import GATEWAY_CLIENT_ID
from trustmesh.reasons import Activity
from trustmesh.testing import PrivateRedis, RunningIdentityServer

PASSWORD = "alice's long passphrase"
NEW_PASSWORD = "alice's brand new passphrase"


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture(params=["poll", "redis"])
def delivery(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[tuple[str, float]]:
    """How revocations travel — by polling the feed, or pushed through Redis (a private
    redis-server) — as the declaration's extra text; and the bound each must meet."""
    if request.param == "poll":
        yield "", POLL_BOUND
        return
    if not PrivateRedis.available():
        if os.environ.get("TRUSTMESH_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is not installed and TRUSTMESH_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(short_tmp)
    redis.start()
    try:
        yield f"auth: {{redis: {redis.url}}}\n", PUSH_BOUND
    finally:
        redis.kill()


@pytest.fixture
async def stack(
    delivery: tuple[str, float], identity: RunningIdentityServer, short_tmp: Path
) -> AsyncIterator[tuple[Stack, float]]:
    extra, bound = delivery
    async with open_stack(identity, short_tmp, extra) as made:
        yield made, bound


async def refused_everywhere(stack: Stack, bound: float, *tokens: str) -> None:
    for token in tokens:

        async def refused(token: str = token) -> bool:
            return await stack.status(token) == 401

        await within(bound, refused, "the gateway still takes a revoked token")


async def signed_in_and_refreshed(live: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """alice signs in and refreshes once: the two generations of her tokens, each access
    token working at the gateway."""
    first = await asyncio.to_thread(live.login, "alice", PASSWORD)
    rotated = await asyncio.to_thread(live.refresh, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    newest: dict[str, Any] = rotated.json()
    for token in (first["access_token"], newest["access_token"]):
        assert await live.status(token) == 200
    return first, newest


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def test_refresh_token_reuse_revokes_the_familys_access_tokens(
    stack: tuple[Stack, float],
) -> None:
    live, bound = stack
    await asyncio.to_thread(live.add_user, "alice", PASSWORD)
    other = await asyncio.to_thread(live.login, "alice", PASSWORD)  # another sign-in
    first, newest = await signed_in_and_refreshed(live)
    # the first refresh token comes back: someone holds a copy
    replayed = await asyncio.to_thread(live.refresh, first["refresh_token"])
    assert replayed.status_code == 400
    await refused_everywhere(live, bound, first["access_token"], newest["access_token"])
    assert (await asyncio.to_thread(live.refresh, newest["refresh_token"])).status_code == 400
    revoked = {e.jti for e in live.rig.sink.events if e.reason == Activity.TOKEN_REVOKED and e.jti}
    assert revoked == {jti(first["access_token"]), jti(newest["access_token"])}  # each an event
    # the same user's other sign-in is not touched
    assert await live.status(other["access_token"]) == 200


async def test_revoking_a_refresh_token_revokes_the_access_tokens_it_issued(
    stack: tuple[Stack, float],
) -> None:
    live, bound = stack
    await asyncio.to_thread(live.add_user, "alice", PASSWORD)
    first, rotated = await signed_in_and_refreshed(live)
    # only the client it was issued to may revoke it (RFC 7009 §2.1)
    stranger = await asyncio.to_thread(
        live.public_post,
        "/oauth2/revoke",
        {"token": rotated["refresh_token"], "client_id": "someone-else"},
    )
    assert stranger.status_code == 401  # no such client (another one: test_subject_revocation)
    assert await live.status(rotated["access_token"]) == 200
    # the hint is only a hint (RFC 7009 §2.1): a refresh token named an access token
    answer = await asyncio.to_thread(
        live.public_post,
        "/oauth2/revoke",
        {
            "token": rotated["refresh_token"],
            "token_type_hint": "access_token",
            "client_id": "shop-web",
        },
    )
    assert answer.status_code == 200, answer.text
    await refused_everywhere(live, bound, first["access_token"], rotated["access_token"])
    assert (await asyncio.to_thread(live.refresh, rotated["refresh_token"])).status_code == 400
    # revoking what the provider does not know is still 200 (RFC 7009 §2.2)
    unknown = await asyncio.to_thread(
        live.public_post,
        "/oauth2/revoke",
        {"token": "no-such-token", "token_type_hint": "refresh_token", "client_id": "shop-web"},
    )
    assert unknown.status_code == 200


def _otp(totp_uri: str) -> str:
    secret = parse_qs(urlsplit(totp_uri).query)["secret"][0]
    return crypto.totp_code(base64.b32decode(secret + "=" * (-len(secret) % 8)), time.time())


@pytest.mark.parametrize("action", ["lock", "reset-mfa", "password"])
async def test_a_user_change_revokes_their_live_tokens_everywhere(
    stack: tuple[Stack, float], action: str
) -> None:
    live, bound = stack
    await asyncio.to_thread(live.add_user, "alice", PASSWORD)
    tokens = await asyncio.to_thread(live.login, "alice", PASSWORD)
    token = tokens["access_token"]
    internal = await live.internal_token(token)
    exchanged = await live.exchanged_token(token)
    # each works before: the refusals below are the revocation's doing
    assert await live.internal_status(internal) == 200
    assert await live.exchanged_status(exchanged) == 200
    body = {"password": NEW_PASSWORD} if action == "password" else None
    done = await asyncio.to_thread(live.admin, "POST", f"/admin/v1/users/alice/{action}", body)
    assert done.status_code == 200, done.text

    async def all_refused() -> bool:
        return (
            await live.status(token) == 401
            and await live.internal_status(internal) == 401
            and await live.exchanged_status(exchanged) == 401
        )

    await within(bound, all_refused, f"after {action}, a token still works")
    introspected = await live.gateway.trust.auth.introspect(token, GATEWAY_CLIENT_ID)  # type: ignore[union-attr]
    assert introspected == {"active": False}
    assert (await asyncio.to_thread(live.refresh, tokens["refresh_token"])).status_code == 400
    assert any(
        e.reason is Activity.TOKEN_REVOKED and e.sub and "before" in e.attributes
        for e in live.rig.sink.events
    ), "the subject's revocation is an event"
    # a token issued after the revocation works (in the same second, too)
    if action == "lock":
        assert (
            await asyncio.to_thread(live.admin, "POST", "/admin/v1/users/alice/unlock")
        ).status_code == 200
        again = await asyncio.to_thread(live.login, "alice", PASSWORD)
    elif action == "reset-mfa":
        otp = _otp(done.json()["totp_uri"])
        again = await asyncio.to_thread(live.login, "alice", PASSWORD, otp)
    else:
        again = await asyncio.to_thread(live.login, "alice", NEW_PASSWORD)
    assert await live.status(again["access_token"]) == 200
    fresh_internal = await live.internal_token(again["access_token"])
    assert await live.internal_status(fresh_internal) == 200
