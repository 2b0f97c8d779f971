"""The health path of the zero-trust middleware, over real mTLS: any SVID of the trust
domain gets ``200 {"status": "ok"}`` for ``GET /.well-known/trustmesh/health`` — no
token, no policy allow, no event — and nothing else: not another method, not another
spelling of the path, not a peer without a valid SVID."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.errors import UnavailableError
from trustmesh.events import MemorySink
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.sdk.middleware import ZeroTrustMiddleware
from trustmesh.sdk.serve import Served, start
from trustmesh.sdk.tls import RotatingTLS, client_context
from trustmesh.sdk.tokens import JWKSCache, TokenVerifier
from trustmesh.sdk.x509source import X509Context, X509Source
from trustmesh.testing import RunningIdentityServer

ORDERS = "spiffe://sdk.example/orders"  # registered for this process by conftest.py
PAYMENTS = "spiffe://sdk.example/payments"
INVENTORY = "spiffe://sdk.example/inventory"
HEALTH = "/.well-known/trustmesh/health"
CONFIG = parse_config(
    """
trust_domain: sdk.example
services:
  orders: {run: "shop.orders:app"}
  payments: {run: "shop.payments:app"}
  inventory: {run: "shop.inventory:app"}
calls:
  - {from: orders, to: payments, allow: ["GET /charges/{id}"]}
""",
    source="test.yaml",
)
HITS: list[str] = []


async def anything(request: Request) -> JSONResponse:
    HITS.append(request.url.path)
    return JSONResponse({"app": "answered"})


APP = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "HEAD"])])


async def _no_keys() -> tuple[bytes, float | None]:
    raise UnavailableError("no provider in this test")


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def middleware(sink: MemorySink) -> ZeroTrustMiddleware:
    """Policy and tokens both required: the health path needs neither."""
    verifier = TokenVerifier(
        audience=PAYMENTS, issuers=["https://auth.sdk.example"], jwks=JWKSCache(_no_keys)
    )
    return ZeroTrustMiddleware(
        APP, authorizer=CallAuthorizer(CONFIG, "payments"), sink=sink, verifier=verifier
    )


@pytest.fixture
async def payments(
    identity: RunningIdentityServer, middleware: ZeroTrustMiddleware
) -> AsyncIterator[Served]:
    HITS.clear()
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    served = await start(middleware, source=source)
    try:
        yield served
    finally:
        await served.stop()
        await source.close()


@pytest.fixture
async def inventory_tls(identity: RunningIdentityServer) -> AsyncIterator[RotatingTLS]:
    """A peer of the trust domain that the declaration lets call nothing on payments."""
    source = X509Source(identity.address, spiffe_id=INVENTORY)
    await source.start()
    try:
        yield RotatingTLS(source)
    finally:
        await source.close()


async def _request(
    port: int, ctx: ssl.SSLContext, target: bytes, method: bytes = b"GET"
) -> tuple[int, dict[str, str], bytes]:
    """The request line exactly as given (HTTP clients normalise paths)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(method + b" " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_any_svid_of_the_trust_domain_gets_ok_without_token_policy_or_event(
    payments: Served, inventory_tls: RotatingTLS, sink: MemorySink
) -> None:
    for target in (HEALTH.encode(), HEALTH.encode() + b"?verbose=1"):
        status, headers, body = await _request(payments.port, inventory_tls.client, target)
        assert status == 200
        assert json.loads(body) == {"status": "ok"}  # nothing but "ok"
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
    assert sink.events == []
    assert HITS == []  # answered by the middleware; the app never saw it


async def test_the_same_peer_gets_nothing_else(
    payments: Served, inventory_tls: RotatingTLS, sink: MemorySink
) -> None:
    status, _, body = await _request(payments.port, inventory_tls.client, b"/charges/ch_1")
    assert status == 403
    assert json.loads(body)["error"] == "forbidden"
    assert [e.reason for e in sink.events] == ["policy-deny"]


async def test_other_paths_still_need_a_token(
    identity: RunningIdentityServer, payments: Served, sink: MemorySink
) -> None:
    source = X509Source(identity.address, spiffe_id=ORDERS)
    await source.start()
    try:
        status, _, _ = await _request(payments.port, RotatingTLS(source).client, b"/charges/ch_1")
    finally:
        await source.close()
    assert status == 401
    assert [e.reason for e in sink.events] == ["token-missing"]


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"POST", HEALTH.encode(), 403),
        (b"HEAD", HEALTH.encode(), 403),
        (b"GET", HEALTH.encode() + b"/", 403),
        (b"GET", b"/.well-known/trustmesh/HEALTH", 403),
        (b"GET", b"/.well-known/trustmesh/health/x", 403),
        (b"GET", b"//.well-known/trustmesh/health", 400),
        (b"GET", b"/.well-known/trustmesh/./health", 400),
        (b"GET", b"/.well-known/trustmesh/%68ealth", 400),
        (b"GET", b"/.well-known/trustmesh/health;x", 400),
    ],
)
async def test_only_get_of_exactly_that_path(
    payments: Served,
    inventory_tls: RotatingTLS,
    sink: MemorySink,
    method: bytes,
    target: bytes,
    expected: int,
) -> None:
    status, _, _ = await _request(payments.port, inventory_tls.client, target, method)
    assert status == expected
    assert len(sink.events) == 1  # an ordinary request: decided, and recorded
    assert HITS == []


async def test_a_peer_without_a_certificate_is_refused(
    payments: Served, inventory_tls: RotatingTLS
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=inventory_tls.source.context.bundle_pem().decode())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"https://127.0.0.1:{payments.port}{HEALTH}", ssl=ctx)


async def test_a_peer_of_another_trust_domain_is_refused(
    payments: Served, other_identity: RunningIdentityServer, inventory_tls: RotatingTLS
) -> None:
    source = X509Source(other_identity.address)
    foreign = await source.start()
    await source.close()
    ctx = client_context(
        X509Context(
            foreign.spiffe_id, foreign.chain, foreign.key, inventory_tls.source.context.bundle
        )
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"https://127.0.0.1:{payments.port}{HEALTH}", ssl=ctx)


async def test_a_certificate_of_our_ca_that_is_no_svid_gets_401(
    payments: Served, identity: RunningIdentityServer, inventory_tls: RotatingTLS
) -> None:
    """Chains to the bundle (TLS accepts it) but carries two URI SANs: not an SVID."""
    from cryptography.hazmat.primitives import hashes  # test-only forgery
    from cryptography.x509.oid import NameOID

    issuer = identity.server.ca.issuer
    key = crypto.generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=5))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ORDERS), x509.UniformResourceIdentifier(INVENTORY)]
            ),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    ctx = client_context(
        X509Context(ORDERS, (cert, issuer.cert), key, inventory_tls.source.context.bundle)
    )
    status, _, body = await _request(payments.port, ctx, HEALTH.encode())
    assert status == 401
    assert json.loads(body)["error"] == "unauthenticated"


async def test_the_middleware_checks_the_peer_before_the_health_path(
    middleware: ZeroTrustMiddleware, sink: MemorySink
) -> None:
    """Behind any server that hands it a request without a verified SPIFFE ID (the TLS
    extension missing or refused), the health path is refused like any other."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    for tls in (None, {"spiffe_id": None, "client_cert_error": "not an SVID"}):
        sent.clear()
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": HEALTH,
            "raw_path": HEALTH.encode(),
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 40000),
            "extensions": {"tls": tls} if tls is not None else {},
        }
        await middleware(scope, receive, send)
        assert sent[0]["status"] == 401
        assert json.loads(sent[1]["body"])["error"] == "unauthenticated"
    assert [e.reason for e in sink.events] == ["unauthenticated", "unauthenticated"]
