"""What the upstream may believe, live: a client sends every header another proxy's auth
module, a load balancer or a framework takes as an identity, a certificate, an address,
a URL or a method — in upper, lower and mixed case, each twice — through a real gateway
to a bare upstream that echoes what it received. None of them arrives; on a strict route
only the headers it declares arrive, besides the ones the gateway itself sets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from edgerig import Edge, edge_stack
from liverig import live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  limits: {max_headers: 1000, max_header_bytes: 65536}  # hundreds of forged header lines
  routes:
    - {path: /echo, to: orders, auth: [anonymous], methods: [GET, POST]}
    - {path: /strict, to: orders, auth: [anonymous], methods: [GET, POST],
       request_headers: [content-type, accept, x-request-id, x-forwarded-user]}
"""
#: Issue 13's list, then other members of their families (the names other proxies' auth
#: modules, load balancers and frameworks set or read).
IDENTITY_AND_ROUTING = [
    "Remote-User",
    "X-Forwarded-User",
    "X-Forwarded-Groups",
    "X-Forwarded-Email",
    "X-Authenticated-User",
    "X-Spiffe-Id",
    "X-SSL-Cert",
    "X-Client-Cert-Chain",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Client-IP",
    # families
    "X-Forwarded-Preferred-Username",  # oauth2-proxy
    "X-Forwarded-Access-Token",
    "X-Forwarded-Host",
    "X-Forwarded-Prefix",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-Auth-Userid",  # Keycloak gatekeeper
    "X-Auth-Roles",
    "X-Remote-Group",  # Kubernetes front proxy
    "X-Remote-Extra-Scopes",
    "Remote-Groups",  # Authelia
    "Remote-Email",
    "X-Authenticated-Userid",  # Kong
    "X-Authenticated-Scope",
    "X-Consumer-Username",
    "X-Consumer-Groups",
    "X-Credential-Identifier",
    "X-Anonymous-Consumer",
    "X-Userinfo",
    "X-Client-Verify",
    "X-Client-DN",
    "X-SSL-Client-S-DN",
    "SSL-Client-Cert",
    "X-ARR-ClientCert",  # Azure
    "X-MS-Client-Principal-Name",
    "X-MS-Token-AAD-Access-Token",
    "X-Amzn-Oidc-Identity",  # AWS ALB
    "X-Amzn-Oidc-Data",
    "X-Amzn-Mtls-Clientcert",
    "X-Goog-Authenticated-User-Email",  # Google IAP
    "X-Goog-IAP-JWT-Assertion",
    "Cf-Access-Authenticated-User-Email",  # Cloudflare Access
    "Cf-Access-Jwt-Assertion",
    "X-Pomerium-Jwt-Assertion",  # Pomerium
    "X-Pomerium-Claim-Email",
    "X-Vouch-User",
    "X-WEBAUTH-USER",  # Grafana's auth proxy
    "X-JWT-Assertion",
    "X-Jwt-Claim-Sub",
    "X-Id-Token",
    "X-Access-Token",
    "Impersonate-User",  # Kubernetes impersonation
    "Impersonate-Group",
    "X-Original-URI",
    "X-Original-Method",
    "X-Original-Host",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Host",
    "X-Real-IP",
    "X-Cluster-Client-IP",
    "Fastly-Client-IP",
    "X-Originating-IP",
    "X-Remote-IP",
    "X-Remote-Addr",
    "X-Azure-ClientIP",
    "X-AppEngine-User-IP",
    "Forwarded",
    "X-Trustmesh-Peer",
    "X-Envoy-Original-Path",
]
KEPT = [("Accept", "application/json"), ("X-Request-Id", "r-1"), ("X-Shop-Locale", "de")]


def spellings(name: str) -> list[str]:
    return [name.upper(), name.lower(), name]


def echo() -> Starlette:
    async def said(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw
                ]
            }
        )

    return Starlette(routes=[Route("/{p:path}", said, methods=["GET", "POST"])])


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
async def edge(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Edge]:
    async with edge_stack(identity, short_tmp, SECTION, echo()) as running:
        yield running


def _sent() -> list[tuple[str, str]]:
    forged = [
        (spelled, f"forged-{i}")
        for name in IDENTITY_AND_ROUTING
        for spelled in spellings(name)
        for i in (1, 2)
    ]
    return [*forged, *KEPT]


async def _received(edge: Edge, path: str) -> list[tuple[str, str]]:
    answer = await edge.send("GET", path, headers=_sent())
    assert answer.status == 200, answer.body
    return [(k, v) for k, v in json.loads(answer.body)["headers"]]


async def test_identity_and_routing_headers_never_reach_the_upstream(edge: Edge) -> None:
    received = await _received(edge, "/echo/x")
    names = [k for k, _ in received]
    leaked = sorted({k for k, v in received if v.startswith("forged-")})
    assert not leaked, leaked
    # what the gateway sets, once each; what no one may misread passes untouched
    assert names.count("x-forwarded-for") == 1
    assert dict(received)["x-forwarded-for"] == "127.0.0.1"
    assert names.count("x-forwarded-proto") == 1
    assert names.count("authorization") == 1
    for name, value in KEPT:
        assert dict(received)[name.lower()] == value


async def test_a_strict_route_forwards_only_the_headers_it_declares(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    received = await _received(edge, "/strict/x")
    names = sorted({k for k, _ in received})
    # declared (content-type was not sent), and what the gateway sets itself
    expected = {"accept", "x-request-id", "authorization", "traceparent"}
    expected |= {"x-forwarded-for", "x-forwarded-proto", "host", "content-length"}
    expected |= {"user-agent", "accept-encoding"}  # the gateway's HTTP client's own
    assert set(names) <= expected, set(names) - expected
    assert {"accept", "x-request-id", "authorization", "x-forwarded-for"} <= set(names)
    assert "x-shop-locale" not in names
    # a strict list cannot let an identity header through: the gateway said so at start
    assert "x-forwarded-user" not in names
    said = [r.getMessage() for r in caplog.get_records("setup")]
    assert any("request_headers: x-forwarded-user never reach" in m for m in said), said
