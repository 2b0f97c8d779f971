"""The SDK client over real mTLS: the server must be the service we meant, idempotent
calls retry, the breaker opens, traces propagate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh.errors import UnavailableError
from trustmesh.sdk import trace
from trustmesh.sdk.client import (
    CircuitBreaker,
    ResponseTooLargeError,
    ServerIdentityError,
    ServiceClient,
)
from trustmesh.sdk.serve import Served, start
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

ORDERS = "spiffe://sdk.example/orders"  # registered for this process by conftest.py
PAYMENTS = "spiffe://sdk.example/payments"
INVENTORY = "spiffe://sdk.example/inventory"


class Flaky:
    """Answers 503 ``failures`` times, then 200; counts every hit."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.hits = 0

    async def handle(self, request: Request) -> Response:
        self.hits += 1
        if self.hits <= self.failures:
            return JSONResponse({"error": "unavailable"}, status_code=503)
        return JSONResponse(
            {"traceparent": request.headers.get("traceparent"), "method": request.method}
        )


async def _serve_as(identity: RunningIdentityServer, spiffe_id: str, flaky: Flaky) -> Served:
    source = X509Source(identity.address, spiffe_id=spiffe_id)
    app = Starlette(routes=[Route("/r", flaky.handle, methods=["GET", "POST", "PUT"])])
    return await start(app, source=source)


@pytest.fixture
async def orders_tls(identity: RunningIdentityServer) -> AsyncIterator[RotatingTLS]:
    source = X509Source(identity.address, spiffe_id=ORDERS)
    await source.start()
    try:
        yield RotatingTLS(source)
    finally:
        await source.close()


async def _stop(served: Served) -> None:
    await served.stop()
    await served.source.close()


async def test_calls_the_expected_service(
    identity: RunningIdentityServer, orders_tls: RotatingTLS
) -> None:
    served = await _serve_as(identity, PAYMENTS, Flaky(0))
    try:
        async with ServiceClient(orders_tls, f"https://127.0.0.1:{served.port}", PAYMENTS) as c:
            response = await c.get("/r")
        assert response.status == 200
    finally:
        await _stop(served)


async def test_a_server_with_another_services_svid_is_refused(
    identity: RunningIdentityServer, orders_tls: RotatingTLS
) -> None:
    flaky = Flaky(0)
    impostor = await _serve_as(identity, INVENTORY, flaky)
    try:
        async with ServiceClient(orders_tls, f"https://127.0.0.1:{impostor.port}", PAYMENTS) as c:
            with pytest.raises(
                ServerIdentityError, match=r"expected spiffe://sdk\.example/payments"
            ):
                await c.get("/r")
        assert flaky.hits == 0, "nothing was sent to the impostor"
    finally:
        await _stop(impostor)


async def test_idempotent_calls_retry_and_others_do_not(
    identity: RunningIdentityServer, orders_tls: RotatingTLS
) -> None:
    flaky = Flaky(2)
    served = await _serve_as(identity, PAYMENTS, flaky)
    try:
        async with ServiceClient(orders_tls, f"https://127.0.0.1:{served.port}", PAYMENTS) as c:
            assert (await c.get("/r")).status == 200
            assert flaky.hits == 3
            flaky.hits, flaky.failures = 0, 1
            assert (await c.post("/r")).status == 503  # POST is never retried
            assert flaky.hits == 1
            flaky.hits, flaky.failures = 0, 5
            assert (await c.request("PUT", "/r")).status == 503  # bounded: 1 + 2 retries
            assert flaky.hits == 3
    finally:
        await _stop(served)


async def test_breaker_opens_and_fails_fast(orders_tls: RotatingTLS) -> None:
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    breaker = CircuitBreaker(threshold=3, cooldown=60)
    async with ServiceClient(
        orders_tls, f"https://127.0.0.1:{port}", PAYMENTS, retries=0, breaker=breaker
    ) as c:
        for _ in range(3):
            with pytest.raises(UnavailableError, match="unreachable"):
                await c.get("/r")
        assert breaker.state == "open"
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="circuit open"):
            await c.get("/r")
        assert time.monotonic() - started < 0.05


def test_breaker_half_open_trial() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=10)
    breaker.record(False, 0)
    breaker.record(False, 1)
    assert not breaker.allow(5)
    assert breaker.allow(11)  # one trial after the cooldown
    assert not breaker.allow(11.1)  # and only one
    breaker.record(False, 11.2)  # trial failed: open again
    assert not breaker.allow(12)
    assert breaker.allow(21.3)
    breaker.record(True, 21.4)
    assert breaker.state == "closed"
    assert breaker.allow(21.5)


async def test_traceparent_propagates(
    identity: RunningIdentityServer, orders_tls: RotatingTLS
) -> None:
    served = await _serve_as(identity, PAYMENTS, Flaky(0))
    parent = trace.TraceParent.new()
    token = trace.use(parent)
    try:
        async with ServiceClient(orders_tls, f"https://127.0.0.1:{served.port}", PAYMENTS) as c:
            sent = trace.parse((await c.get("/r")).json()["traceparent"])
        assert sent is not None
        assert sent.trace_id == parent.trace_id
        assert sent.span_id != parent.span_id
    finally:
        trace.reset(token)
        await _stop(served)


async def test_a_server_that_refuses_our_svid_is_a_clear_error(
    identity: RunningIdentityServer,
    other_identity: RunningIdentityServer,
    orders_tls: RotatingTLS,
) -> None:
    """The other trust domain's server does not trust our CA: it hangs up after the TLS 1.3
    handshake; the client says why that probably happened."""
    source = X509Source(other_identity.address)
    foreign = await start(Starlette(routes=[Route("/r", Flaky(0).handle)]), source=source)
    try:
        # trust the foreign server's CA too, so only the server side refuses
        from trustmesh.sdk.tls import client_context
        from trustmesh.sdk.x509source import X509Context

        mine = orders_tls.source.context
        both = X509Context(
            mine.spiffe_id, mine.chain, mine.key, mine.bundle + source.context.bundle
        )
        orders_tls._client = client_context(both)
        async with ServiceClient(
            orders_tls,
            f"https://127.0.0.1:{foreign.port}",
            "spiffe://other.example/orders",
            retries=0,
        ) as c:
            with pytest.raises(UnavailableError, match=r"refuse our SVID"):
                await c.get("/r")
    finally:
        await _stop(foreign)


def test_trace_parsing() -> None:
    assert trace.parse("00-" + "a" * 32 + "-" + "b" * 16 + "-01") is not None
    for bad in (
        None,
        "",
        "00-" + "0" * 32 + "-" + "b" * 16 + "-01",
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
        "01-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "00-" + "A" * 32 + "-" + "b" * 16 + "-01",
        "00-abc-def-01",
        "garbage",
    ):
        assert trace.parse(bad) is None


async def test_an_answer_larger_than_the_client_reads_is_refused(
    identity: RunningIdentityServer, orders_tls: RotatingTLS
) -> None:
    """Decoded size counts: a small gzip bomb is refused, not buffered; never retried."""
    import gzip

    bomb = gzip.compress(b"0" * 200_000)
    hits = 0

    async def big(_: Request) -> Response:
        nonlocal hits
        hits += 1
        return Response(bomb, headers={"content-encoding": "gzip"})

    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    served = await start(Starlette(routes=[Route("/big", big)]), source=source)
    try:
        url = f"https://127.0.0.1:{served.port}"
        async with ServiceClient(orders_tls, url, PAYMENTS, max_response_bytes=100_000) as c:
            with pytest.raises(ResponseTooLargeError):
                await c.get("/big")
        assert hits == 1
        assert len(bomb) < 100_000  # small on the wire
        async with ServiceClient(orders_tls, url, PAYMENTS, max_response_bytes=300_000) as c:
            assert len((await c.get("/big")).body) == 200_000
    finally:
        await _stop(served)
