"""A workload whose SPIFFE ID is suspended gets no token from the identity provider, however
valid the certificate it still holds: client credentials over mTLS (RFC 8705, Authlib's
client) are refused ``403 access_denied`` (RFC 6749 §5.2's shape) with a
``suspended-spiffe-id`` event; the provider's other mTLS routes answer ``403 forbidden``;
once the suspension is lifted the same workload gets its token again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.auth import encode_none
from authrig import AUTH, CONFIG, OPERATOR, ORDERS, PAYMENTS, auth_config, identity_for, workload
from spiffe_http import Workload
from suspensionrig import feed_of, lift, suspend

from trustmesh import events
from trustmesh.auth.server import RunningAuth, serve_auth
from trustmesh.reasons import Reason
from trustmesh.sdk.suspensions import SuspensionFeed
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(short_tmp, CONFIG, discovery=True)


@dataclass
class Rig:
    identity: RunningIdentityServer
    auth: RunningAuth
    feed: SuspensionFeed
    sink: events.MemorySink
    orders: Workload
    payments: Workload
    operator: Workload

    def token(self, who: Workload, client_id: str) -> requests.Response:
        """Client credentials over mTLS (RFC 8705 ``tls_client_auth``: the client id in
        the form, the certificate authenticates)."""
        form = {"grant_type": "client_credentials", "client_id": client_id, "audience": "inventory"}
        with who.mount(requests.Session()) as s:
            return s.post(self.auth.url + "/oauth2/token", data=form, timeout=10)

    def fetch(self, who: Workload, client_id: str) -> dict[str, Any]:
        """The same, through Authlib's OAuth 2 client (which raises on a refusal)."""
        session = OAuth2Session(client_id=client_id, token_endpoint_auth_method="tls_client_auth")
        session.register_client_auth_method(("tls_client_auth", encode_none))
        with who.mount(session) as s:
            token: dict[str, Any] = s.fetch_token(
                self.auth.url + "/oauth2/token",
                grant_type="client_credentials",
                audience="inventory",
            )
            return token

    def get(self, who: Workload, path: str) -> requests.Response:
        with who.mount(requests.Session()) as s:
            return s.get(self.auth.url + path, timeout=10)

    def issued(self) -> int:
        return sum(e.reason == Reason.TOKEN_ISSUED for e in self.sink.events)

    def suspended_events(self) -> list[events.Event]:
        return [e for e in self.sink.events if e.reason == Reason.SPIFFE_ID_SUSPENDED]


@pytest.fixture
async def rig(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Rig]:
    sink = events.MemorySink()
    source = X509Source(identity.address, spiffe_id=AUTH)
    await source.start()
    files = short_tmp / "pki"
    people = [await workload(identity, s, files) for s in (ORDERS, PAYMENTS, OPERATOR)]
    try:
        async with feed_of(source, identity) as feed:
            running = await serve_auth(
                auth_config(), short_tmp / "state", source=source, sink=sink, suspended=feed
            )
            try:
                yield Rig(identity, running, feed, sink, *people)
            finally:
                await running.stop()
    finally:
        for who in people:
            await who.source.close()
        await source.close()


def _json(answer: requests.Response) -> dict[str, Any]:
    doc: dict[str, Any] = answer.json()
    return doc


async def test_a_suspended_workload_gets_no_token_until_lifted(rig: Rig) -> None:
    before = await asyncio.to_thread(rig.token, rig.orders, "orders")
    assert before.status_code == 200, before.text

    await suspend(rig.identity, rig.operator, rig.feed, ORDERS)
    issued = rig.issued()
    refused = await asyncio.to_thread(rig.token, rig.orders, "orders")
    assert refused.status_code == 403
    assert _json(refused)["error"] == "access_denied"
    assert "suspended" in _json(refused)["error_description"]
    assert refused.headers["cache-control"] == "no-store"
    (event,) = rig.suspended_events()
    assert event.decision == events.Decision.DENY
    assert event.peer_spiffe_id == ORDERS
    assert rig.issued() == issued  # the provider never saw the request

    # anyone else is served as before
    other = await asyncio.to_thread(rig.token, rig.payments, "payments")
    assert other.status_code == 200, other.text

    # (the error not kept: its traceback would hold the client's connection open)
    with pytest.raises(OAuthError, match=r"^access_denied: "):
        await asyncio.to_thread(rig.fetch, rig.orders, "orders")

    await lift(rig.identity, rig.operator, rig.feed, ORDERS)
    after = await asyncio.to_thread(rig.fetch, rig.orders, "orders")
    assert after["token_type"] == "Bearer"
    assert len(rig.suspended_events()) == 2


async def test_the_providers_other_routes_refuse_a_suspended_workload_in_their_shape(
    rig: Rig,
) -> None:
    assert (await asyncio.to_thread(rig.get, rig.orders, "/jwks.json")).status_code == 200
    await suspend(rig.identity, rig.operator, rig.feed, ORDERS)
    for path in ("/jwks.json", "/v1/revocations", "/admin/v1/clients"):
        answer = await asyncio.to_thread(rig.get, rig.orders, path)
        assert answer.status_code == 403, path
        assert _json(answer)["error"] == "forbidden", path
    assert [e.peer_spiffe_id for e in rig.suspended_events()] == [ORDERS] * 3
