"""The gateway, live: TLS in from a client with no SVID, the user's token verified with
the provider's keys, the request forwarded over mTLS to a service run by the SDK, which
believes only the gateway's internal token. Each refusal is asserted with its event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authrig import ORDERS, PAYMENTS, AuthRig, code_flow
from liverig import GATEWAY, live_gateway, live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.gateway.server import RunningGateway
from trustmesh.reasons import Reason
from trustmesh.sdk.runtime import Runtime
from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  max_body_bytes: 1024
  routes:
    - {path: /orders, to: orders, methods: [GET, POST], claims: [roles, preferred_username],
       cors: {origins: ["https://shop.example"]}}
    - {path: /public, to: orders, auth: [anonymous]}
    - {path: /stock, to: inventory}
    - {path: /partners, to: orders, auth: [anonymous], allow_ips: [10.0.0.0/8]}
    - {path: /blocked, to: orders, auth: [anonymous], deny_ips: [127.0.0.0/8]}
"""
PASSWORD = "alice's long passphrase"
REDIRECT = "https://shop.example/cb"


async def echo(request: Request) -> JSONResponse:
    """The upstream: says what it was told, and by whom."""
    token = request.state.trustmesh_token
    return JSONResponse(
        {
            "path": request.url.path,
            "query": request.url.query,
            "sub": token.subject,
            "claims": {k: v for k, v in token.claims.items() if k not in ("exp", "iat", "jti")},
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
        },
        headers={
            "x-trustmesh-debug": "internal",
            "set-cookie": "a=1",
            "access-control-allow-origin": "*",  # the gateway decides CORS, not the service
        },
    )


RUNTIMES: dict[str, Runtime] = {}


async def pay(request: Request) -> JSONResponse:
    """orders → payments on the user's behalf: the gateway's token is exchanged."""
    client = await RUNTIMES["orders"].client_for("payments", on_behalf_of=request)
    answer = await client.post("/charges", json={"amount": 5})
    return JSONResponse(answer.json(), status_code=answer.status)


APP = Starlette(
    routes=[
        Route("/orders/{id}/pay", pay, methods=["POST"]),
        Route("/{path:path}", echo, methods=["GET", "POST"]),
    ]
)


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
async def stack(
    identity: RunningIdentityServer, short_tmp: Path
) -> AsyncIterator[tuple[AuthRig, RunningGateway, Runtime, events.MemorySink]]:
    services = [("payments", APP), ("orders", APP)]
    async with live_gateway(identity, short_tmp, SECTION, services) as live:
        _, orders = live.runtimes
        RUNTIMES["orders"] = orders
        try:
            yield live.rig, live.gateway, orders, live.sink
        finally:
            RUNTIMES.clear()


def _token(rig: AuthRig, audiences: list[str], client_id: str = "shop-web") -> str:
    ca = str(crypto.edge_ca_path(rig.state))
    with rig.operator.mount(requests.Session()) as s:
        s.post(
            rig.url + "/admin/v1/users",
            json={"username": "alice", "password": PASSWORD, "roles": ["user"]},
            timeout=30,
        )
        made = s.post(
            rig.url + "/admin/v1/clients",
            json={
                "client_id": client_id,
                "method": "none",
                "redirect_uris": [REDIRECT],
                "audiences": audiences,
            },
            timeout=30,
        )
        assert made.status_code == 201, made.text
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = ca
        tokens = code_flow(browser, rig.public_url, client_id, REDIRECT, "alice", PASSWORD)
    return str(tokens["access_token"])


def _call(
    gateway: RunningGateway, ca: str, method: str, path: str, token: str | None = None, **kw: Any
) -> requests.Response:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with requests.Session() as s:
        s.trust_env = False
        return s.request(method, gateway.url + path, headers=headers, verify=ca, timeout=30, **kw)


def _reasons(sink: events.MemorySink) -> list[str]:
    return [e.reason for e in sink.events]


async def test_a_user_reaches_the_service_through_the_gateway(stack: Any) -> None:
    rig, gateway, _, sink = stack
    ca = str(crypto.edge_ca_path(rig.state))
    token = await asyncio.to_thread(_token, rig, [GATEWAY])
    answer = await asyncio.to_thread(
        _call,
        gateway,
        ca,
        "POST",
        "/orders/o_1?x=1",
        token,
        json={"item": "tea"},
        headers={
            "X-Forwarded-For": "10.9.9.9",
            "X-Trustmesh-Spiffe-Id": "spiffe://auth.example/trustmesh/operator",
            "X-Forwarded-Client-Cert": "URI=spiffe://auth.example/payments",
        },
    )
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["path"] == "/orders/o_1"
    assert seen["query"] == "x=1"
    assert seen["body"] == json.dumps({"item": "tea"}).replace(", ", ", ")
    claims = seen["claims"]
    assert claims["iss"] == GATEWAY
    assert claims["aud"] == ORDERS
    assert claims["act"] == {"sub": GATEWAY}
    assert claims["roles"] == ["user"]
    assert claims["preferred_username"] == "alice"
    assert "amr" not in claims  # not mapped by the route
    headers = seen["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the gateway's, not the client's
    assert "x-trustmesh-spiffe-id" not in headers
    assert "x-forwarded-client-cert" not in headers
    assert headers["authorization"] != f"Bearer {token}"  # the user's token stays at the edge
    # the response: security headers on, internal ones off
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "x-trustmesh-debug" not in answer.headers
    assert answer.headers["set-cookie"] == "a=1"
    forwarded = [e for e in sink.events if e.reason == Reason.REQUEST_FORWARDED]
    assert forwarded
    assert forwarded[-1].sub == seen["sub"]
    # an anonymous route says so upstream
    anonymous = await asyncio.to_thread(_call, gateway, ca, "GET", "/public/menu")
    assert anonymous.status_code == 200
    assert anonymous.json()["sub"] == "anonymous"
    # the internal token is signed once per credential and route, and reused while it
    # is fresh: the service's verifier hits its cache too
    again = await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/o_2", token)
    assert again.json()["headers"]["authorization"] == headers["authorization"]
    assert anonymous.json()["headers"]["authorization"] != headers["authorization"]


async def test_refusals_at_the_edge(stack: Any) -> None:
    rig, gateway, _, sink = stack
    ca = str(crypto.edge_ca_path(rig.state))
    no_token = await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/o_1")
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    garbage = await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/o_1", "garbage")
    assert garbage.status_code == 401
    assert 'error="invalid_token"' in garbage.headers["WWW-Authenticate"]
    # a token addressed to a service, not to the gateway
    wrong = await asyncio.to_thread(_token, rig, ["orders"], "other-app")
    refused = await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/o_1", wrong)
    assert refused.status_code == 401
    assert Reason.TOKEN_WRONG_AUDIENCE in _reasons(sink)
    encoded = await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/%2e%2e/stock")
    assert encoded.status_code == 400
    assert (await asyncio.to_thread(_call, gateway, ca, "GET", "/nowhere")).status_code == 404
    wrong_method = await asyncio.to_thread(_call, gateway, ca, "DELETE", "/orders/o_1")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET, POST"
    token = await asyncio.to_thread(_token, rig, [GATEWAY])
    big = await asyncio.to_thread(_call, gateway, ca, "POST", "/orders", token, data=b"x" * 2048)
    assert big.status_code == 413
    # no live inventory instance: a fast 503, not a hang
    down = await asyncio.to_thread(_call, gateway, ca, "GET", "/stock/1", token)
    assert down.status_code == 503
    for reason in (
        Reason.TOKEN_MISSING,
        Reason.PATH_NON_CANONICAL,
        Reason.ROUTE_NOT_FOUND,
        Reason.METHOD_NOT_ALLOWED,
        Reason.REQUEST_TOO_LARGE,
        Reason.UPSTREAM_UNAVAILABLE,
    ):
        assert reason in _reasons(sink), reason


async def test_a_service_acts_for_the_user_beyond_the_gateway(stack: Any) -> None:
    """orders got the request through the gateway and calls payments for the user: the
    provider trades the gateway's token (RFC 8693); payments sees the user as subject
    and the chain gateway → orders as actors."""
    rig, gateway, _, _ = stack
    ca = str(crypto.edge_ca_path(rig.state))
    token = await asyncio.to_thread(_token, rig, [GATEWAY])
    answer = await asyncio.to_thread(_call, gateway, ca, "POST", "/orders/o_1/pay", token)
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["path"] == "/charges"
    claims = seen["claims"]
    assert claims["iss"] == rig.issuer  # the provider's token now
    assert claims["aud"] == PAYMENTS
    assert claims["act"] == {"sub": ORDERS, "act": {"sub": GATEWAY}}
    user = await asyncio.to_thread(_userinfo_sub, rig, token)
    assert seen["sub"] == user
    # a forged "gateway" token is not traded: only the gateway's keys vouch for it
    forged = crypto.sign_jwt(
        {"iss": GATEWAY, "sub": user, "aud": ORDERS, "exp": 4_000_000_000, "iat": 1, "jti": "f"},
        crypto.generate_key(),
        kid=gateway.key.kid,  # even naming the gateway's key id
        typ="at+jwt",
    )

    def exchange(subject: str) -> requests.Response:
        with rig.orders.mount(requests.Session()) as s:
            return s.post(
                rig.url + "/oauth2/token",
                data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "client_id": "orders",
                    "subject_token": subject,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "audience": "payments",
                },
                timeout=30,
            )

    refused = await asyncio.to_thread(exchange, forged)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    # and the user's own token for the gateway is not orders' to trade
    not_for_orders = await asyncio.to_thread(exchange, token)
    assert not_for_orders.status_code == 400


def _userinfo_sub(rig: AuthRig, token: str) -> str:
    ca = str(crypto.edge_ca_path(rig.state))
    info = requests.get(
        rig.public_url + "/oauth2/userinfo",
        headers={"Authorization": f"Bearer {token}"},
        verify=ca,
        timeout=30,
    )
    assert info.status_code == 200, info.text
    return str(info.json()["sub"])


async def test_a_revoked_token_is_refused_within_two_seconds(stack: Any) -> None:
    rig, gateway, _, sink = stack
    ca = str(crypto.edge_ca_path(rig.state))
    token = await asyncio.to_thread(_token, rig, [GATEWAY])
    assert (
        await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/o_1", token)
    ).status_code == 200
    revoked = await asyncio.to_thread(
        lambda: requests.post(
            rig.public_url + "/oauth2/revoke",
            data={"token": token, "client_id": "shop-web"},
            verify=ca,
            timeout=30,
        )
    )
    assert revoked.status_code == 200
    started = time.monotonic()
    status = 200
    while time.monotonic() - started < 2.0:
        status = (
            await asyncio.to_thread(_call, gateway, ca, "GET", "/orders/o_1", token)
        ).status_code
        if status == 401:
            break
        await asyncio.sleep(0.1)
    assert status == 401, "the gateway still took a token revoked 2 s ago"
    assert Reason.TOKEN_REVOKED in _reasons(sink)


async def test_address_rules_hold_and_a_forged_x_forwarded_for_does_not_help(
    stack: Any,
) -> None:
    rig, gateway, _, sink = stack
    ca = str(crypto.edge_ca_path(rig.state))
    for path in ("/partners/x", "/blocked/x"):
        refused = await asyncio.to_thread(
            _call, gateway, ca, "GET", path, headers={"X-Forwarded-For": "10.1.2.3"}
        )
        assert refused.status_code == 403, path
        assert refused.json()["error"] == "forbidden"
    assert _reasons(sink).count(Reason.IP_DENIED) == 2
    assert (await asyncio.to_thread(_call, gateway, ca, "GET", "/public/x")).status_code == 200
    # a route's address rules hold for its CORS preflights too
    preflight = await asyncio.to_thread(
        _call,
        gateway,
        ca,
        "OPTIONS",
        "/blocked/x",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 403
    assert _reasons(sink).count(Reason.IP_DENIED) == 3


async def test_cors_is_granted_only_to_the_declared_origin(stack: Any) -> None:
    rig, gateway, _, sink = stack
    ca = str(crypto.edge_ca_path(rig.state))

    def preflight(
        origin: str, method: str = "POST", headers: str = "authorization"
    ) -> requests.Response:
        return _call(
            gateway,
            ca,
            "OPTIONS",
            "/orders/o_1",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )

    ok = await asyncio.to_thread(preflight, "https://shop.example")
    assert ok.status_code == 204, ok.text
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert ok.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert "Access-Control-Allow-Credentials" not in ok.headers
    for refused in (
        await asyncio.to_thread(preflight, "https://evil.example"),
        await asyncio.to_thread(preflight, "https://shop.example", "DELETE"),
        await asyncio.to_thread(preflight, "https://shop.example", "POST", "x-evil"),
    ):
        assert refused.status_code == 403
        assert "Access-Control-Allow-Origin" not in refused.headers
    assert _reasons(sink).count(Reason.CORS_DENIED) == 3
    # a route without a CORS policy grants nothing, whatever its service says
    no_cors = await asyncio.to_thread(
        _call, gateway, ca, "GET", "/public/x", headers={"Origin": "https://shop.example"}
    )
    assert no_cors.status_code == 200
    assert "Access-Control-Allow-Origin" not in no_cors.headers
    token = await asyncio.to_thread(_token, rig, [GATEWAY])
    allowed = await asyncio.to_thread(
        _call, gateway, ca, "GET", "/orders/o_1", token, headers={"Origin": "https://shop.example"}
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    other = await asyncio.to_thread(
        _call, gateway, ca, "GET", "/orders/o_1", token, headers={"Origin": "https://evil.example"}
    )
    assert other.status_code == 200
    assert "Access-Control-Allow-Origin" not in other.headers
