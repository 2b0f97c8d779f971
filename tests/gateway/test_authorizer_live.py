"""The gateway as an external authorizer, live: a proxy that forwards by itself asks,
Envoy's way (the original request after ``/ext_authz``) or nginx's (``X-Original-*``),
and gets the gateway's own decisions — the internal token to attach when allowed, the
gateway's refusal (status, headers, body) when not; a route that inspects bodies is
never allowed unchecked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from authrig import sign_in_user
from edgerig import Edge, edge_stack, recording
from liverig import GATEWAY, live_identity
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from trustmesh import crypto
from trustmesh.gateway.authorizer import Authorizer
from trustmesh.platform.guard import ConnectionGuard, ConnectionLimits
from trustmesh.platform.listeners import PublicServed, start_public
from trustmesh.sdk import spans
from trustmesh.testing import RunningIdentityServer
from trustmesh.testing.rawtls import RawTLS

SECTION = """auth: {roles: [customer]}
gateway:
  policies: [edge.cedar]
  waf: {mode: "off"}
  routes:
    - {path: /shop, to: orders, auth: [jwt], methods: [GET, POST]}
    - {path: /closed, to: orders, auth: [jwt], methods: [GET]}
    - {path: /burst, to: orders, auth: [anonymous], methods: [GET],
       rate_limits: [{per: ip, limit: 1/minute}]}
    - {path: /inspected, to: orders, auth: [anonymous], methods: [GET], waf: {mode: fast}}
"""
POLICIES = """
permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/closed*" };
"""
SEEN: list[str] = []


#: The tests only ask: they share one stack and authorizer, on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(module_tmp, SECTION)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_edge(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Edge]:
    files = {"edge.cedar": POLICIES}
    async with edge_stack(identity, module_tmp, SECTION, recording(SEEN), files) as running:
        running.tokens["carol"] = await asyncio.to_thread(
            sign_in_user, running.rig, "carol", ["customer"], audience=GATEWAY
        )
        yield running


@pytest.fixture
def edge(shared_edge: Edge) -> Edge:
    """The module's stack, with nothing yet seen by its upstream or recorded by its
    gateway in this test."""
    SEEN.clear()
    shared_edge.sink.events.clear()
    return shared_edge


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def checks(shared_edge: Edge, module_tmp: Path) -> AsyncIterator[RawTLS]:
    seal_key = crypto.load_seal_key(module_tmp / "authz", dev=True)
    certificate = crypto.local_server_certificate(module_tmp / "authz", seal_key)
    pipeline = shared_edge.gateway.pipeline
    assert pipeline is not None
    served: PublicServed = await start_public(
        Authorizer(lambda: pipeline.app),
        chain_pem=certificate.chain_pem(),
        key_pem=certificate.key_pem(),
        guard=ConnectionGuard(ConnectionLimits()),
        on_refusals=lambda _: None,
        report_every=3600,
    )
    yield RawTLS(served.port, crypto.edge_ca_path(module_tmp / "authz"))
    await served.stop()


async def ask(checks: RawTLS, target: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    lines = [f"GET {target} HTTP/1.1", "Host: shop.example", "Connection: close", *headers]
    raw = await checks.exchange(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    fields = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in rest))
    return int(status_line.split()[1]), fields, body


def bearer(edge: Edge) -> str:
    return f"Authorization: Bearer {edge.tokens['carol']}"


async def test_an_allowed_request_gets_the_internal_token_either_way(
    edge: Edge, checks: RawTLS
) -> None:
    span = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for asked in (
        ("/ext_authz/shop/items?q=tea",),  # Envoy
        (  # nginx: the span is nginx's, which it tells
            "/ext_authz",
            "X-Original-Method: GET",
            "X-Original-URI: /shop/items?q=tea",
            f"traceparent: {span}",
        ),
    ):
        status, headers, body = await ask(checks, asked[0], *asked[1:], bearer(edge))
        assert (status, body) == (200, b""), body
        scheme, _, token = headers["authorization"].partition(" ")
        assert scheme == "Bearer"
        assert token != edge.tokens["carol"]  # the gateway's own token, not the client's
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["iss"] == GATEWAY
        assert claims["aud"].endswith("/orders")
        if asked[0] == "/ext_authz":
            assert "traceparent" not in headers  # nginx's span goes to the upstream
        else:
            assert headers["traceparent"].startswith("00-")
    allowed = [e for e in edge.sink.events if e.reason.value == "policy-allow"]
    assert [e.decision.value for e in allowed] == ["allow", "allow"]
    assert allowed[1].trace_id == span.split("-")[1]
    assert allowed[0].sub is not None
    assert SEEN == []  # the authorizer forwards nothing


async def test_refusals_are_the_gateways_own_answers(edge: Edge, checks: RawTLS) -> None:
    status, headers, body = await ask(checks, "/ext_authz/shop/items")  # no token
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"] == "unauthenticated"
    status, _, body = await ask(checks, "/ext_authz/closed", bearer(edge))  # off policy
    assert (status, json.loads(body)["error"]) == (403, "forbidden")
    status, _, _ = await ask(checks, "/ext_authz/nowhere", bearer(edge))
    assert status == 404
    assert (await ask(checks, "/ext_authz/burst"))[0] == 200
    status, headers, _ = await ask(checks, "/ext_authz/burst")
    assert status == 429
    assert int(headers["retry-after"]) > 0
    reasons = [e.reason.value for e in edge.sink.events if e.decision.value == "deny"]
    assert "policy-deny" in reasons
    assert "rate-limited" in reasons


async def test_a_route_that_inspects_bodies_is_not_allowed_unchecked(
    edge: Edge, checks: RawTLS
) -> None:
    status, _, body = await ask(checks, "/ext_authz/inspected")
    assert status == 500
    assert json.loads(body)["error"] == "engine_unsupported"
    (event,) = [e for e in edge.sink.events if e.attributes.get("path") == "/inspected"]
    assert (event.decision.value, event.reason.value) == ("error", "policy-deny")


async def test_what_is_not_a_check_is_not_answered_as_one(checks: RawTLS) -> None:
    for asked in (
        ("/shop",),
        ("/ext_authz",),
        ("/ext_authz", "X-Original-Method: GET"),
        # a client's copy beside the proxy's: which one is meant cannot be told
        ("/ext_authz", "X-Original-Method: GET", "X-Original-URI: /shop", "X-Original-URI: /x"),
        ("/ext_authz", "X-Original-Method: GET", "X-Original-Method: POST", "X-Original-URI: /s"),
    ):
        status, headers, _ = await ask(checks, asked[0], *asked[1:])
        assert status == 404
        assert "authorization" not in headers


async def test_each_question_is_a_span_under_the_proxys(edge: Edge, checks: RawTLS) -> None:
    """nginx tells its span of the request; the authorizer's span of the question is its
    child, named after the request asked about, with the decision and the reason."""
    kept = _Kept()
    previous = spans.install(spans.Tracer("gateway", kept, sample_ratio=0.0))
    nginx = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"  # not sampled
    try:
        for path in ("/shop/items", "/closed/x"):
            await ask(
                checks,
                "/ext_authz",
                "X-Original-Method: GET",
                f"X-Original-URI: {path}",
                f"traceparent: {nginx}",
                bearer(edge),
            )
    finally:
        spans.install(previous)
    (refused,) = kept.spans  # the allowed one was not sampled: not kept
    assert refused.name == "authorize GET /closed/x"
    assert refused.parent is not None
    assert f"{refused.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert refused.context is not None
    assert f"{refused.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    attributes = dict(refused.attributes or {})
    assert (attributes["trustmesh.decision"], attributes["trustmesh.reason"]) == (
        "deny",
        "policy-deny",
    )


class _Kept(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)
