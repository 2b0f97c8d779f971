"""A service behind the SDK with the identity provider in front: tokens are required,
revocation reaches the service within 2 s (polling, and Redis pub/sub), and neither SVID
rotation (10-second TTL) nor signing-key rotation under steady load yields a 401."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from authrig import AUTH, CONFIG, ORDERS, PAYMENTS, AuthRig, make_rig
from services import require_service
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import events
from trustmesh.errors import UsageError
from trustmesh.reasons import Reason
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.middleware import TOKEN_STATE_KEY
from trustmesh.sdk.oauth import AuthClient, RevocationFeed, TokenSource
from trustmesh.sdk.runtime import Runtime, run_service
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import RevocationList
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import FakeClock, RunningIdentityServer


async def charge(request: Request) -> JSONResponse:
    token = request.state.trustmesh_token if hasattr(request.state, TOKEN_STATE_KEY) else None
    return JSONResponse({"sub": token.subject if token else None}, status_code=201)


APP = Starlette(routes=[Route("/charges", charge, methods=["POST"])])


@dataclass
class Caller:
    tls: RotatingTLS
    auth: AuthClient
    tokens: TokenSource
    payments: ServiceClient
    source: X509Source


@asynccontextmanager
async def stack(
    identity: RunningIdentityServer,
    short_tmp: Path,
    extra: str = "",
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[tuple[AuthRig, Runtime, Caller, events.MemorySink]]:
    async with make_rig(identity, short_tmp, extra, clock) as rig:
        config = short_tmp / "trustmesh.yaml"
        config.write_text(CONFIG + extra)
        sink = events.MemorySink()
        runtime = await run_service(
            APP,
            service="payments",
            config_path=config,
            address=identity.address,
            port=0,
            sink=sink,
            auth_url=rig.url,
            discovery_url="",
        )
        source = X509Source(identity.address, spiffe_id=ORDERS)
        await source.start()
        tls = RotatingTLS(source)
        auth = AuthClient(tls, rig.url, AUTH)
        tokens = TokenSource(auth, "orders")
        payments = ServiceClient(tls, runtime.url, PAYMENTS, token=tokens.provider(PAYMENTS))
        try:
            yield rig, runtime, Caller(tls, auth, tokens, payments, source), sink
        finally:
            await payments.close()
            await auth.close()
            await source.close()
            await runtime.close()


async def test_requests_need_a_token_for_this_service(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with stack(identity, short_tmp) as (_, runtime, caller, sink):
        ok = await caller.payments.post("/charges", json={})
        assert ok.status == 201
        assert ok.json()["sub"] == ORDERS
        async with ServiceClient(caller.tls, runtime.url, PAYMENTS) as bare:
            missing = await bare.post("/charges", json={})
            assert missing.status == 401
            assert missing.headers["WWW-Authenticate"] == 'Bearer realm="trustmesh"'
            # a token for another audience
            other = await caller.tokens.token("spiffe://auth.example/inventory")
            wrong = await bare.post(
                "/charges", json={}, headers={"Authorization": f"Bearer {other}"}
            )
            assert wrong.status == 401
            assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        reasons = [e.reason for e in sink.events]
        assert Reason.TOKEN_MISSING in reasons
        assert Reason.TOKEN_WRONG_AUDIENCE in reasons
        allowed = [e for e in sink.events if e.reason == Reason.POLICY_ALLOW]
        assert allowed[-1].sub == ORDERS
        assert allowed[-1].client_id == "orders"


async def _revoked_within(rig: AuthRig, caller: Caller, limit: float) -> float:
    token = await caller.tokens.token(PAYMENTS)
    assert (await caller.payments.post("/charges", json={})).status == 201
    revoke = await caller.auth.http.post(
        "/oauth2/revoke", data={"token": token, "client_id": "orders"}
    )
    assert revoke.status == 200
    started = time.monotonic()
    async with ServiceClient(caller.tls, caller.payments.base_url, PAYMENTS) as bare:
        while time.monotonic() - started < limit + 3:
            r = await bare.post("/charges", json={}, headers={"Authorization": f"Bearer {token}"})
            if r.status == 401:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    pytest.fail("the revoked token was still accepted")


async def test_revocation_reaches_the_service_within_2s_by_polling(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with stack(identity, short_tmp) as (rig, _, caller, _sink):
        assert await _revoked_within(rig, caller, 2.0) <= 2.0


@pytest.mark.services
async def test_revocation_reaches_the_service_at_once_over_redis(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    channel = f"tm-test:{uuid.uuid4().hex}"  # the declared channel, on both ends
    extra = f"auth: {{redis: 'redis://127.0.0.1:6379/0', revocation_channel: '{channel}'}}\n"
    async with stack(identity, short_tmp, extra) as (rig, runtime, caller, _sink):
        assert runtime.revocations is not None
        assert runtime.revocations.redis_url is not None
        assert runtime.revocations.redis_channel == channel
        await asyncio.sleep(0.5)  # the subscription is in place
        # with Redis, polling is every 10 s: only the channel can be this fast
        assert await _revoked_within(rig, caller, 2.0) <= 2.0


async def _steady_load(caller: Caller, stop: asyncio.Event) -> dict[int, int]:
    """Four callers, each sending its next request 10 ms after the last answer, until
    ``stop`` is set (or a minute has passed); how many answers of each status."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + 60

    async def worker() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            r = await caller.payments.post("/charges", json={})
            statuses[r.status] = statuses.get(r.status, 0) + 1
            await asyncio.sleep(0.01)

    await asyncio.gather(*(worker() for _ in range(4)))
    return statuses


async def test_no_401_across_svid_rotations(
    fast_identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with stack(fast_identity, short_tmp) as (_, _runtime, caller, _sink):
        first = caller.tls.generation
        stop = asyncio.Event()
        load = asyncio.create_task(_steady_load(caller, stop))
        # a 10 s SVID is renewed after 4 s (RENEW_FRACTION), so two renewals take about 8 s
        # of real time: TLS checks certificates against the real clock, not a fake one
        deadline = time.monotonic() + 30
        while caller.tls.generation - first < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the load goes on with the newest SVID
        stop.set()
        statuses = await load
        assert caller.tls.generation - first >= 2, "expected several rotations"
        assert set(statuses) == {201}, statuses
        assert caller.tokens.fetched >= 3  # a new bound token after each rotation


async def test_no_401_across_a_signing_key_rotation(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    extra = "auth: {key_publish_delay: 10s, access_token_ttl: 10m, key_rotation: 1h}\n"
    # The provider's clock is moved past the publish delay, not waited for. It runs 15 s
    # behind the real time, so even then no token it signs is dated in the future of the
    # service, which checks iat against the real time (with 5 s of leeway).
    clock = FakeClock(time.time() - 15)
    async with stack(identity, short_tmp, extra, clock.time) as (rig, _runtime, caller, _sink):
        old_token = await caller.tokens.token(PAYMENTS)
        old_kid = rig.auth.service.ring.active.kid if rig.auth.service.ring.active else None
        stop = asyncio.Event()
        load = asyncio.create_task(_steady_load(caller, stop))
        await asyncio.sleep(1.0)
        await rig.auth.service.tick(rotate=True)
        await asyncio.sleep(1.0)  # under load: the new key is published, the old one signs
        assert rig.auth.service.ring.active is not None
        assert rig.auth.service.ring.active.kid == old_kid
        clock.advance(11)  # past the publish delay: the new key signs now
        await rig.auth.service.tick()
        assert rig.auth.service.ring.active is not None
        assert rig.auth.service.ring.active.kid != old_kid
        new_token = await caller.tokens.token(PAYMENTS, force=True)
        assert new_token != old_token
        assert jwt.get_unverified_header(new_token)["kid"] == rig.auth.service.ring.active.kid
        await asyncio.sleep(1.0)  # under load with the new key's tokens
        stop.set()
        statuses = await load
        assert set(statuses) == {201}, statuses
        # the old token is still good until it expires; the new one is signed by the new key
        async with ServiceClient(caller.tls, caller.payments.base_url, PAYMENTS) as bare:
            for token in (old_token, new_token):
                r = await bare.post(
                    "/charges", json={}, headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status == 201


def test_a_redis_url_without_its_channel_is_refused() -> None:
    with pytest.raises(UsageError, match="channel"):
        RevocationFeed(None, RevocationList(), redis_url="redis://127.0.0.1:6379/0")  # type: ignore[arg-type]
