"""The gateway's Cedar policies, live: users of the provider with the roles customer,
support and admin (with TOTP) sign in, and the edge decides per role, route and path,
each refusal with its event and the policy that decided."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authrig import CONFIG, AuthRig, sign_in_user
from fake_oidc import FakeIssuer, fake_issuer
from liverig import GATEWAY, live_gateway, live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config import parse_config
from trustmesh.errors import UnavailableError
from trustmesh.gateway.server import RunningGateway, serve_gateway
from trustmesh.reasons import Reason
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import FakeClock, RunningIdentityServer

SECTION = """auth: {roles: [customer, support]}
gateway:
  policies: [edge.cedar]
  metrics_port: 0
  routes:
    - {path: /orders, to: orders, methods: [GET, POST]}
    - {path: /admin, to: orders}
    - {path: /live, to: orders, auth: [introspection]}
    - {path: /staff, to: orders, issuers: [trustmesh]}
"""
POLICIES = """
@id("customers-order")
permit (principal is User, action in [Action::"GET", Action::"POST"], resource == Route::"/orders")
when { principal.roles.contains("customer") && !(context.path like "/orders/*/refund") };

@id("support-reads-orders")
permit (principal is User, action == Action::"GET", resource == Route::"/orders")
when { principal.roles.contains("support") };

@id("admins-with-mfa")
permit (principal is User, action, resource)
when { principal.roles.contains("admin") && principal.mfa };

@id("customers-live")
permit (principal is User, action == Action::"GET", resource == Route::"/live")
when { principal.roles.contains("customer") };

@id("customers-staff")
permit (principal is User, action == Action::"GET", resource == Route::"/staff")
when { principal.roles.contains("customer") };

@id("admin-routes-need-mfa")
forbid (principal, action, resource == Route::"/admin")
unless { principal.roles.contains("admin") && principal.mfa };
"""


async def echo(request: Request) -> JSONResponse:
    token = request.state.trustmesh_token
    return JSONResponse({"path": request.url.path, "sub": token.subject})


APP = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
def clock() -> FakeClock:
    """The gateway's wall clock (the introspection cache's second passes when moved)."""
    return FakeClock()


@pytest.fixture
async def stack(
    identity: RunningIdentityServer, short_tmp: Path, clock: FakeClock
) -> AsyncIterator[tuple[AuthRig, RunningGateway, events.MemorySink, FakeIssuer]]:
    # another OpenID Provider (Keycloak-like) the gateway also trusts
    async with (
        fake_issuer(short_tmp / "kc") as kc,
        live_gateway(
            identity,
            short_tmp,
            SECTION,
            [("orders", APP)],
            files={"edge.cedar": POLICIES},
            issuers=[kc.declaration(principal="user")],
            clock=clock.time,
        ) as live,
    ):
        yield live.rig, live.gateway, live.sink, kc


def _sign_in(rig: AuthRig, username: str, roles: list[str]) -> str:
    return sign_in_user(rig, username, roles, audience=GATEWAY)


def _call(rig: AuthRig, gateway: RunningGateway, method: str, path: str, token: str) -> int:
    with requests.Session() as s:
        s.trust_env = False
        answer = s.request(
            method,
            gateway.url + path,
            headers={"Authorization": f"Bearer {token}"},
            verify=str(crypto.edge_ca_path(rig.state)),
            timeout=30,
        )
        return answer.status_code


def _last_denial(sink: events.MemorySink) -> events.Event:
    denials = [e for e in sink.events if e.reason == Reason.POLICY_DENY]
    assert denials
    return denials[-1]


async def test_roles_decide_at_the_edge(stack: Any) -> None:
    rig, gateway, sink, _ = stack
    carol = await asyncio.to_thread(_sign_in, rig, "carol", ["customer"])
    sam = await asyncio.to_thread(_sign_in, rig, "sam", ["support"])
    root = await asyncio.to_thread(_sign_in, rig, "root", ["admin"])

    async def call(method: str, path: str, token: str) -> int:
        return await asyncio.to_thread(_call, rig, gateway, method, path, token)

    # a customer orders and reads, but does not refund
    assert await call("POST", "/orders", carol) == 200
    assert await call("GET", "/orders/o1", carol) == 200
    assert await call("POST", "/orders/o1/refund", carol) == 403
    # a policy's path is the one served: an escaped '?' or '#' is refused, not decoded
    assert await call("POST", "/orders/o1/refund%3F", carol) == 400
    assert await call("POST", "/orders/o1/refund%23x", carol) == 400
    denial = _last_denial(sink)
    assert denial.attributes["path"] == "/orders/o1/refund"
    assert denial.attributes["route"] == "routes[0]"
    # support reads any order, changes none, and has no business on the admin routes
    assert await call("GET", "/orders/o1", sam) == 200
    assert await call("POST", "/orders/o1/refund", sam) == 403
    assert await call("POST", "/orders", sam) == 403
    assert await call("GET", "/admin/orders", sam) == 403
    assert _last_denial(sink).attributes["policy"] == "admin-routes-need-mfa"
    # an admin who signed in with TOTP may
    assert await call("GET", "/admin/orders", root) == 200
    assert await call("POST", "/orders/o1/refund", root) == 200
    allowed = [e for e in sink.events if e.reason == Reason.REQUEST_FORWARDED]
    assert allowed[-1].attributes["policy"] == "admins-with-mfa"
    assert all(e.decision == events.Decision.DENY for e in sink.events if e.reason == "policy-deny")
    body = json.dumps([dict(e.attributes) for e in sink.events])
    assert carol not in body  # tokens never reach the events
    # and the admin port counts them, labelled by route and reason, never by path or user
    metrics = await asyncio.to_thread(requests.get, gateway.metrics_url, timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=")
    text = metrics.text
    assert 'trustmesh_gateway_requests_total{route="/orders",status="4xx"} 3.0' in text
    assert 'trustmesh_gateway_requests_total{route="/admin",status="2xx"} 1.0' in text
    assert 'trustmesh_gateway_decisions_total{decision="deny",reason="policy-deny"} 4.0' in text
    assert "trustmesh_gateway_request_duration_seconds_bucket" in text
    assert "/orders/o1" not in text
    assert "carol" not in text


async def test_jwt_routes_keep_working_while_the_provider_is_down(
    stack: Any, clock: FakeClock
) -> None:
    """The gateway verifies with the provider's keys it already has: stopping the
    provider does not stop signed-in users (ARCHITECTURE: identity provider down)."""
    rig, gateway, sink, _ = stack
    carol = await asyncio.to_thread(_sign_in, rig, "carol", ["customer"])
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/orders/o1", carol) == 200
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/live/o1", carol) == 200
    await rig.auth.stop()
    for _ in range(3):
        assert await asyncio.to_thread(_call, rig, gateway, "GET", "/orders/o1", carol) == 200
    clock.advance(1.1)  # past the introspection answer's second of caching
    # a route that must ask the provider cannot, and says so
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/live/o1", carol) == 503
    unavailable = [e for e in sink.events if e.reason is Reason.VERIFICATION_UNAVAILABLE]
    assert [e.decision for e in unavailable] == [events.Decision.ERROR]
    # and a token the gateway never saw, signed by a key it does not know, is still refused
    forged = crypto.sign_jwt(
        {"iss": rig.issuer, "sub": "x", "aud": GATEWAY, "exp": 4_000_000_000, "iat": 1},
        crypto.generate_key(),
        kid="unknown",
        typ="at+jwt",
    )
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/orders/o1", forged) == 401


async def test_the_gateway_does_not_start_without_the_provider(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    config = parse_config(CONFIG + SECTION, source="trustmesh.yaml")
    (short_tmp / "edge.cedar").write_text(POLICIES)
    assert identity.server.discovery is not None
    source = X509Source(identity.address, spiffe_id=GATEWAY)
    await source.start()
    try:
        for auth_url in (None, "https://127.0.0.1:9"):  # not running; nothing listening
            with pytest.raises(UnavailableError):
                await serve_gateway(
                    config,
                    short_tmp / "state",
                    source=source,
                    sink=events.MemorySink(),
                    discovery_url=f"https://127.0.0.1:{identity.server.discovery.port}",
                    auth_url=auth_url,
                    config_dir=short_tmp,
                )
    finally:
        await source.close()


async def test_tokens_of_another_openid_provider(stack: Any) -> None:
    """A Keycloak-style RS256 token (roles under realm_access) is verified with that
    provider's JWKS, found through discovery; its roles meet the same policies."""
    rig, gateway, sink, kc = stack

    def call(method: str, path: str, token: str) -> int:
        return _call(rig, gateway, method, path, token)

    customer = kc.token()
    assert await asyncio.to_thread(call, "GET", "/orders/o1", customer) == 200
    assert await asyncio.to_thread(call, "POST", "/orders/o1/refund", customer) == 403
    support = kc.token(sub="kc-user-2", realm_access={"roles": ["support"]})
    assert await asyncio.to_thread(call, "GET", "/orders/o1", support) == 200
    assert await asyncio.to_thread(call, "GET", "/admin/orders", support) == 403
    assert await asyncio.to_thread(call, "GET", "/orders/o1", kc.token(aud="other")) == 401
    forwarded = [e for e in sink.events if e.reason == Reason.REQUEST_FORWARDED]
    assert forwarded[0].sub == f"{kc.url}#kc-user-1"
    # a route that takes only the provider's users refuses the other issuer's
    assert await asyncio.to_thread(call, "GET", "/staff/x", customer) == 401
    assert sink.events[-1].reason == Reason.TOKEN_WRONG_ISSUER
    carol = await asyncio.to_thread(_sign_in, rig, "carol", ["customer"])
    assert await asyncio.to_thread(call, "GET", "/staff/x", carol) == 200
    # that issuer may not make admins: its "admin" role is dropped at the edge
    boss = kc.token(sub="kc-boss", realm_access={"roles": ["admin"]}, amr=["pwd", "otp"])
    assert await asyncio.to_thread(call, "GET", "/admin/orders", boss) == 403
    assert Reason.TOKEN_WRONG_AUDIENCE in [e.reason for e in sink.events]


async def test_introspection_routes_see_a_revocation_at_once(stack: Any, clock: FakeClock) -> None:
    """The provider vouches for each token on an introspection route: once the user's app
    revokes the token (RFC 7009), the next request past the second of caching is refused."""
    rig, gateway, sink, _ = stack
    carol = await asyncio.to_thread(_sign_in, rig, "carol", ["customer"])
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/live/o1", carol) == 200

    def revoke() -> int:
        with requests.Session() as s:
            s.trust_env = False
            return s.post(
                rig.public_url + "/oauth2/revoke",
                data={"token": carol, "client_id": "shop-web"},
                verify=str(crypto.edge_ca_path(rig.state)),
                timeout=30,
            ).status_code

    assert await asyncio.to_thread(revoke) == 200
    clock.advance(1.1)  # past the introspection answer's second of caching
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/live/o1", carol) == 401
    assert Reason.TOKEN_INACTIVE in [e.reason for e in sink.events]
    # and a support user, active, is still decided by policy after introspection
    sam = await asyncio.to_thread(_sign_in, rig, "sam", ["support"])
    assert await asyncio.to_thread(_call, rig, gateway, "GET", "/live/o1", sam) == 403


async def test_a_partial_body_is_never_forwarded(stack: Any) -> None:
    """A client that declares a body and goes away halfway: nothing reaches the service."""
    rig, gateway, sink, _ = stack
    carol = await asyncio.to_thread(_sign_in, rig, "carol", ["customer"])
    context = ssl.create_default_context(cafile=str(crypto.edge_ca_path(rig.state)))
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), ssl=context, server_hostname="localhost"
    )
    writer.write(
        b"POST /orders/partial HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer " + carol.encode() + b"\r\n"
        b'Content-Type: application/json\r\nContent-Length: 26\r\n\r\n{"item": "tea"'
    )
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()
    for _ in range(50):
        if Reason.REQUEST_INCOMPLETE in [e.reason for e in sink.events]:
            break
        await asyncio.sleep(0.1)
    assert Reason.REQUEST_INCOMPLETE in [e.reason for e in sink.events]
    forwarded = [e for e in sink.events if e.reason == Reason.REQUEST_FORWARDED]
    assert not [e for e in forwarded if e.attributes.get("path") == "/orders/partial"]
