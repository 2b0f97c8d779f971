"""Suspending a SPIFFE ID for a server component's test: the operator asks the identity
service's admin API (on its discovery listener, over mTLS), and the component's feed is
polled once — no waiting for its interval."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
from spiffe_http import Workload

from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import SVIDSource, X509Source
from trustmesh.testing import RunningIdentityServer

#: Never reached in a test: every poll is made by hand.
INTERVAL = 3600.0


@contextlib.asynccontextmanager
async def feed_of(
    source: SVIDSource, identity: RunningIdentityServer
) -> AsyncIterator[SuspensionFeed]:
    """The component's feed (``source``: its SVID), polled only by hand."""
    url = identity.server.discovery_url
    assert url is not None, "the identity service must serve discovery (discovery=True)"
    feed = SuspensionFeed(RotatingTLS(source), url, interval=INTERVAL)
    try:
        yield feed
    finally:
        await feed.close()


@contextlib.asynccontextmanager
async def component_feed(
    identity: RunningIdentityServer, spiffe_id: str
) -> AsyncIterator[SuspensionFeed]:
    """The feed of the component whose SVID is ``spiffe_id`` (fetched here)."""
    source = X509Source(identity.address, spiffe_id=spiffe_id)
    await source.start()
    try:
        async with feed_of(source, identity) as made:
            yield made
    finally:
        await source.close()


async def _admin(
    identity: RunningIdentityServer, operator: Workload, method: str, path: str, body: object
) -> None:
    url = str(identity.server.discovery_url) + path
    connector = aiohttp.TCPConnector(ssl=operator.ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, url, json=body) as answer,
    ):
        assert answer.status < 300, await answer.text()


async def suspend(
    identity: RunningIdentityServer, operator: Workload, feed: SuspensionFeed, spiffe_id: str
) -> None:
    """Suspend ``spiffe_id`` (no end) and let ``feed`` learn it."""
    body = {"spiffe_id": spiffe_id, "cause": "test"}
    await _admin(identity, operator, "POST", "/admin/v1/suspensions", body)
    assert await feed.poll_once()
    assert spiffe_id in feed


async def lift(
    identity: RunningIdentityServer, operator: Workload, feed: SuspensionFeed, spiffe_id: str
) -> None:
    """Lift ``spiffe_id``'s suspension and let ``feed`` learn it."""
    path = "/admin/v1/suspensions?" + urlencode({"spiffe_id": spiffe_id})
    await _admin(identity, operator, "DELETE", path, None)
    assert await feed.poll_once()
    assert spiffe_id not in feed
