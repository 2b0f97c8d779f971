"""A suspended SPIFFE ID is refused by services: the middleware, fed by the identity
service's suspensions feed (polled over real mTLS), answers a suspended peer 403
(``suspended-spiffe-id``) within the poll interval, accepts it again once lifted or
ended by the clock, and keeps the last list it knew when the feed is away."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import events
from trustmesh.config import parse_config
from trustmesh.errors import UnavailableError
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.reasons import Reason
from trustmesh.sdk.middleware import ZeroTrustMiddleware
from trustmesh.sdk.serve import Served, start
from trustmesh.sdk.suspensions import SuspendedIDs, SuspensionFeed
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import FakeClock, RunningIdentityServer, identity_server_in_thread

TD = "hold.example"
ORDERS = f"spiffe://{TD}/orders"
PAYMENTS = f"spiffe://{TD}/payments"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"
CONFIG = parse_config(
    f"""
trust_domain: {TD}
dev: true
services:
  orders: {{run: "shop.orders:app"}}
  payments: {{run: "shop.payments:app"}}
calls:
  - {{from: orders, to: payments, allow: ["POST /charges"]}}
""",
    source="test.yaml",
)
INTERVAL = 0.2


async def charge(_: Request) -> JSONResponse:
    return JSONResponse({"id": "ch_1"})


APP = Starlette(routes=[Route("/charges", charge, methods=["POST"])])


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(CONFIG, short_tmp / "state", discovery=True) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (ORDERS, PAYMENTS, OPERATOR):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@dataclass
class Rig:
    identity: RunningIdentityServer
    payments: Served
    feed: SuspensionFeed
    sink: events.MemorySink
    clock: FakeClock
    orders: RotatingTLS
    operator: RotatingTLS
    http: aiohttp.ClientSession

    async def charge(self) -> tuple[int, Any]:
        url = f"https://127.0.0.1:{self.payments.port}/charges"
        async with self.http.post(url, ssl=self.orders.client) as answer:
            return answer.status, await answer.json()

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        url = str(self.identity.server.discovery_url) + path
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, url, json=body, ssl=self.operator.client) as answer,
        ):
            assert answer.status < 300, await answer.text()
            return await answer.json()

    async def until_status(self, status: int) -> tuple[int, Any]:
        """The answer to a charge, once it is ``status`` (within a few poll intervals)."""
        for _ in range(int(5 / INTERVAL)):
            got = await self.charge()
            if got[0] == status:
                return got
            await asyncio.sleep(INTERVAL / 2)
        return await self.charge()


async def _tls(identity: RunningIdentityServer, spiffe_id: str) -> tuple[X509Source, RotatingTLS]:
    source = X509Source(identity.address, spiffe_id=spiffe_id)
    await source.start()
    return source, RotatingTLS(source)


@pytest.fixture
async def rig(identity: RunningIdentityServer) -> AsyncIterator[Rig]:
    clock = FakeClock()
    sources: list[X509Source] = []
    tls: dict[str, RotatingTLS] = {}
    for spiffe_id in (PAYMENTS, ORDERS, OPERATOR):
        source, tls[spiffe_id] = await _tls(identity, spiffe_id)
        sources.append(source)
    url = str(identity.server.discovery_url)
    feed = SuspensionFeed(tls[PAYMENTS], url, interval=INTERVAL, clock=clock.time)
    await feed.start()
    sink = events.MemorySink()
    app = ZeroTrustMiddleware(
        APP, authorizer=CallAuthorizer(CONFIG, "payments"), sink=sink, suspended=feed
    )
    served = await start(app, tls=tls[PAYMENTS])
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(identity, served, feed, sink, clock, tls[ORDERS], tls[OPERATOR], http)
    finally:
        await served.stop()
        await feed.close()
        for source in sources:
            await source.close()


def _lift(spiffe_id: str) -> str:
    return "/admin/v1/suspensions?" + urlencode({"spiffe_id": spiffe_id})


async def test_a_suspended_peer_is_refused_within_the_interval_and_accepted_once_lifted(
    rig: Rig,
) -> None:
    assert await rig.charge() == (200, {"id": "ch_1"})
    await rig.admin("POST", "/admin/v1/suspensions", {"spiffe_id": ORDERS, "cause": "test"})
    status, body = await rig.until_status(403)
    assert (status, body["error"]) == (403, "forbidden")
    assert "suspended" in body["message"]
    refused = [e for e in rig.sink.events if e.reason == Reason.SPIFFE_ID_SUSPENDED]
    assert refused
    assert refused[0].decision == events.Decision.DENY
    assert refused[0].peer_spiffe_id == ORDERS
    await rig.admin("DELETE", _lift(ORDERS))
    assert (await rig.until_status(200))[0] == 200


async def test_a_suspension_ends_by_the_clock_without_a_poll(rig: Rig) -> None:
    await rig.admin("POST", "/admin/v1/suspensions", {"spiffe_id": ORDERS, "seconds": 60})
    assert (await rig.until_status(403))[0] == 403
    version = rig.feed.known.version
    rig.clock.advance(dt.timedelta(seconds=61))
    assert (await rig.charge())[0] == 200
    assert rig.feed.known.version == version  # the list did not change: the clock did


async def test_the_last_known_list_holds_while_the_feed_is_away(
    rig: Rig, identity: RunningIdentityServer
) -> None:
    await rig.admin("POST", "/admin/v1/suspensions", {"spiffe_id": ORDERS})
    assert (await rig.until_status(403))[0] == 403

    async def stop_discovery() -> None:  # on the server's loop; stopped once, not again
        discovery, identity.server.discovery = identity.server.discovery, None
        assert discovery is not None
        await discovery.stop()

    asyncio.run_coroutine_threadsafe(stop_discovery(), identity.loop).result(timeout=30)
    with pytest.raises(UnavailableError, match="unreachable"):
        await rig.feed.poll_once()
    await asyncio.sleep(INTERVAL * 3)  # polls fail meanwhile, and are logged
    assert ORDERS in rig.feed
    assert (await rig.charge())[0] == 403


def test_an_unchanged_list_is_not_replaced_and_ends_are_read_from_the_clock() -> None:
    clock = FakeClock(1_000_000)
    known = SuspendedIDs(clock.time)
    known.replace(3, {ORDERS: 1_000_000_000 + 500, PAYMENTS: None})
    assert ORDERS in known
    assert PAYMENTS in known
    assert "spiffe://hold.example/inventory" not in known
    assert 7 not in known
    clock.advance(0.5)
    assert ORDERS not in known
    assert PAYMENTS in known
    assert (known.version, len(known)) == (3, 2)
