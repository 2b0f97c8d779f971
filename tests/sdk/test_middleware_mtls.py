"""The zero-trust middleware behind `serve`, over real mTLS: who may call what is the
declaration's `calls`, decided by Cedar; every decision is an event."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh.config import parse_config
from trustmesh.events import MemorySink
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.sdk.middleware import ZeroTrustMiddleware
from trustmesh.sdk.serve import Served, start
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

ORDERS = "spiffe://sdk.example/orders"  # registered for this process by conftest.py
PAYMENTS = "spiffe://sdk.example/payments"
INVENTORY = "spiffe://sdk.example/inventory"
CONFIG = parse_config(
    """
trust_domain: sdk.example
services:
  orders: {run: "shop.orders:app"}
  payments: {run: "shop.payments:app"}
  inventory: {run: "shop.inventory:app"}
calls:
  - {from: orders, to: payments, allow: ["POST /charges", "GET /charges/{id}"]}
""",
    source="test.yaml",
)


async def charge(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params.get("id", "new")})


APP = Starlette(
    routes=[Route("/charges", charge, methods=["POST"]), Route("/charges/{id}", charge)]
)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def payments(identity: RunningIdentityServer, sink: MemorySink) -> AsyncIterator[Served]:
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    app = ZeroTrustMiddleware(APP, authorizer=CallAuthorizer(CONFIG, "payments"), sink=sink)
    served = await start(app, source=source)
    try:
        yield served
    finally:
        await served.stop()
        await source.close()


async def _tls_as(
    identity: RunningIdentityServer, spiffe_id: str
) -> tuple[X509Source, RotatingTLS]:
    source = X509Source(identity.address, spiffe_id=spiffe_id)
    await source.start()
    return source, RotatingTLS(source)


async def test_allowed_caller_gets_200(
    identity: RunningIdentityServer, payments: Served, sink: MemorySink
) -> None:
    source, tls = await _tls_as(identity, ORDERS)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"https://127.0.0.1:{payments.port}/charges", ssl=tls.client
            ) as r:
                assert r.status == 200
            async with session.get(
                f"https://127.0.0.1:{payments.port}/charges/ch_9", ssl=tls.client
            ) as r:
                assert r.status == 200
                assert await r.json() == {"id": "ch_9"}
    finally:
        await source.close()
    allowed = [e for e in sink.events if e.reason == "policy-allow"]
    assert len(allowed) == 2
    assert allowed[0].peer_spiffe_id == ORDERS
    assert allowed[1].attributes["route"] == "payments GET /charges/{id}"


@pytest.mark.parametrize(
    ("caller", "method", "path"),
    [
        (INVENTORY, "POST", "/charges"),  # not a declared caller
        (ORDERS, "DELETE", "/charges/ch_1"),  # declared caller, undeclared method
        (ORDERS, "GET", "/charges"),  # undeclared method for this path
        (ORDERS, "GET", "/admin"),  # undeclared path
    ],
)
async def test_disallowed_call_gets_403_and_an_event(
    identity: RunningIdentityServer,
    payments: Served,
    sink: MemorySink,
    caller: str,
    method: str,
    path: str,
) -> None:
    source, tls = await _tls_as(identity, caller)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"https://127.0.0.1:{payments.port}{path}", ssl=tls.client
            ) as r,
        ):
            assert r.status == 403
            assert (await r.json())["error"] == "forbidden"  # one spelling of 403
    finally:
        await source.close()
    (event,) = sink.events
    assert event.reason == "policy-deny"
    assert event.peer_spiffe_id == caller
    assert event.decision == "deny"
    assert event.attributes["method"] == method


async def _raw_request(port: int, ctx: ssl.SSLContext, target: bytes) -> int:
    """Send the request line exactly as given (HTTP clients normalise paths)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize(
    "target",
    [
        b"/charges/../admin",
        b"/charges/%2e%2e/admin",
        b"//charges/ch_1",
        b"/charges/ch_1;x=1",
        b"/charges%2Fch_1",
        b"/charges/ch_1%00",
        b"/charges/%252e%252e",
        b"/charges/%63h_1",
        b"/charges/ch_1%5C..%5Cadmin",
    ],
)
async def test_non_canonical_paths_get_400(
    identity: RunningIdentityServer, payments: Served, sink: MemorySink, target: bytes
) -> None:
    source, tls = await _tls_as(identity, ORDERS)
    try:
        status = await _raw_request(payments.port, tls.client, target)
    finally:
        await source.close()
    assert status == 400
    assert [e.reason for e in sink.events] == ["path-non-canonical"]


async def test_a_token_in_the_path_is_not_written_to_the_event(
    identity: RunningIdentityServer, payments: Served, sink: MemorySink
) -> None:
    jwt_like = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    source, tls = await _tls_as(identity, INVENTORY)
    try:
        status = await _raw_request(payments.port, tls.client, b"/charges/" + jwt_like)
    finally:
        await source.close()
    assert status == 403
    (event,) = sink.events
    assert event.attributes["path"] == "<withheld>"
    assert jwt_like.decode() not in json.dumps(event.to_ocsf())
