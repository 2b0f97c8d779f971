"""The same attacks, refused the same way, through both engines (issue 18): the gateway
serving the edge itself (``engine: python``) and nginx serving it while the gateway's
authorizer decides (``engine: nginx``), also where nginx keeps the authorizer's decisions
(``decision_ttl``). One declaration, one upstream that records what reaches it; every
answer the client gets is compared with what the gateway answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from authrig import ORDERS, sign_in_user
from edgerig import Answer, Edge, edge_stack
from liverig import GATEWAY, live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from trustmesh.gateway.nginx import NginxEdge
from trustmesh.testing import RunningIdentityServer

SECTION = """auth: {{roles: [customer]}}
gateway:
  engine: {engine}
  policies: [edge.cedar]
  waf: {{mode: "off"}}
  routes:
    - {{path: /shop, to: orders, auth: [jwt], methods: [GET, POST]}}
    - {{path: /closed, to: orders, auth: [jwt], methods: [GET]}}
    - {{path: /ping, to: orders, auth: [anonymous], methods: [GET]}}
    - {{path: /burst, to: orders, auth: [anonymous], methods: [GET],
       rate_limits: [{{per: ip, limit: 1/minute}}]}}
    - {{path: /strict, to: orders, auth: [anonymous], methods: [GET],
       request_headers: [x-tenant]}}
    - {{path: /web, to: orders, auth: [jwt], methods: [GET, POST],
       cors: {{origins: ["https://shop.example"], credentials: true}}}}
    - {{path: /menu, to: orders, auth: [anonymous], methods: [GET], request_headers: [x-tenant]}}
    - {{path: /menu, to: orders, auth: [jwt], methods: [POST],
       rate_limits: [{{per: consumer, limit: 100/minute}}]}}
    - {{path: /desk, host: staff.shop.example, to: orders, auth: [anonymous], methods: [GET],
       request_headers: [x-tenant]}}
    - {{path: /desk, to: orders, auth: [jwt], methods: [GET]}}
    - {{path: /desk/admin, host: staff.shop.example, to: orders, auth: [anonymous],
       methods: [GET], request_headers: [x-tenant]}}
"""
POLICIES = """
permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/closed*" };
"""
SEEN: list[dict[str, object]] = []
#: Headers a client could speak for the gateway with: none may reach the upstream.
FORGED = (
    ("X-Forwarded-User", "admin"),
    ("X-Forwarded-For", "10.9.9.9"),
    ("Forwarded", "for=10.9.9.9"),
    ("X-Real-IP", "10.9.9.9"),
    ("X-Trustmesh-Subject", "admin"),
    ("X-Client-Cert", "forged"),
    ("X-Original-URL", "/closed"),
    ("X-Spiffe-Id", "spiffe://shop.example/payments"),
    ("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
)


def recorder() -> Starlette:
    async def record(request: Request) -> Response:
        SEEN.append(
            {
                "method": request.method,
                "path": request.scope["raw_path"].decode("latin-1"),
                "headers": [(k.decode(), v.decode()) for k, v in request.scope["headers"]],
            }
        )
        if request.url.path == "/shop/fail":
            return PlainTextResponse("Traceback (most recent call last): secret", status_code=500)
        if request.url.path == "/shop/busy":  # what an error keeps of the upstream's answer
            return PlainTextResponse(
                "busy", status_code=503, headers={"Retry-After": "7", "X-Internal": "db-3"}
            )
        if request.url.path == "/web/cors":  # the upstream's own grants never reach anyone
            return JSONResponse(
                {"reached": True},
                headers={"Access-Control-Allow-Origin": "*", "Access-Control-Max-Age": "1"},
            )
        if request.url.path == "/shop/readonly":
            return PlainTextResponse("no", status_code=405, headers={"Allow": "GET, HEAD"})
        return JSONResponse({"reached": True})

    return Starlette(routes=[Route("/{p:path}", record, methods=["GET", "POST", "OPTIONS"])])


#: Each engine, as the declaration names it.
ENGINES = {
    "python": "python",
    "nginx": "nginx",
    "nginx-kept": "nginx\n  nginx: {decision_ttl: 30s}",
}


#: The tests only send requests: they share one stack per engine, on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", params=list(ENGINES))
def engine(request: pytest.FixtureRequest) -> str:
    if request.param != "python":
        request.getfixturevalue("nginx_available")
    return ENGINES[request.param]


@pytest.fixture(scope="module")
def engine_tmp(engine: str) -> Iterator[Path]:
    """A short directory for one engine's stack (unix socket paths are limited)."""
    path = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def identity(engine_tmp: Path, engine: str) -> Iterator[RunningIdentityServer]:
    yield from live_identity(engine_tmp, SECTION.format(engine=engine))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_edge(
    identity: RunningIdentityServer, engine_tmp: Path, engine: str
) -> AsyncIterator[Edge]:
    section = SECTION.format(engine=engine)
    files = {"edge.cedar": POLICIES}
    async with edge_stack(identity, engine_tmp, section, recorder(), files) as running:
        running.tokens["carol"] = await asyncio.to_thread(
            sign_in_user, running.rig, "carol", ["customer"], audience=GATEWAY
        )
        await forwarding(running)
        yield running


@pytest.fixture
def edge(shared_edge: Edge) -> Edge:
    """The engine's stack, with nothing yet seen by its upstream in this test."""
    SEEN.clear()
    return shared_edge


async def forwarding(edge: Edge) -> None:
    """Until the upstream is reachable through the edge (nginx learns it from discovery,
    and its workers from before that reload have gone)."""
    for _ in range(100):
        answer = await edge.send("GET", "/ping")
        if answer.status == 200:
            public = edge.gateway.public
            if isinstance(public, NginxEdge):
                assert await public.engine.settled(), proxy_log(edge)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the edge never forwarded: {answer.status} {answer.body!r}")


def proxy_log(edge: Edge) -> str:
    """nginx's error log, where nginx serves (what a failure message should show)."""
    public = edge.gateway.public
    if not isinstance(public, NginxEdge):
        return ""
    return public.engine.error_log_tail()


def error(answer: Answer) -> tuple[int, str]:
    body = json.loads(answer.body)
    assert set(body) >= {"error", "message"}, body
    return answer.status, body["error"]


def security_headers(answer: Answer) -> None:
    assert answer.header("x-content-type-options") == "nosniff"
    assert answer.header("x-frame-options") == "DENY"
    assert answer.header("strict-transport-security") is not None


def forged_alg_none(token: str) -> str:
    _, payload, _ = token.split(".")
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    return f"{none}.{payload}."


async def test_a_user_token_passes_and_the_upstream_gets_only_the_gateway_s_word(
    edge: Edge,
) -> None:
    answer = await edge.send("GET", "/shop/items?q=1", who="carol", headers=FORGED)
    assert answer.status == 200, (answer.body, proxy_log(edge))
    assert json.loads(answer.body) == {"reached": True}
    security_headers(answer)
    (seen,) = SEEN
    assert seen["path"] == "/shop/items"
    headers = dict(seen["headers"])  # type: ignore[arg-type]
    token = headers["authorization"].removeprefix("Bearer ")
    internal = jwt.decode(token, options={"verify_signature": False})
    assert internal["aud"] == ORDERS  # the gateway's internal token, for this upstream
    assert internal["act"]["sub"] == GATEWAY
    assert token != edge.tokens["carol"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    names = {name for name, _ in seen["headers"]}  # type: ignore[union-attr]
    for name, value in FORGED:
        if name.lower() in ("x-forwarded-for", "traceparent"):
            assert value not in headers.get(name.lower(), ""), name
        else:
            assert name.lower() not in names, name


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (None, (401, "unauthenticated")),
        ("garbage", (401, "invalid_token")),
        ("altered", (401, "invalid_token")),
        ("alg-none", (401, "invalid_token")),
    ],
)
async def test_bad_credentials_are_refused_alike(
    edge: Edge, credential: str | None, expected: tuple[int, str]
) -> None:
    token = edge.tokens["carol"]
    values = {
        "garbage": "garbage",
        "altered": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        "alg-none": forged_alg_none(token),
    }
    headers = [] if credential is None else [("Authorization", f"Bearer {values[credential]}")]
    answer = await edge.send("GET", "/shop/items", headers=headers)
    assert error(answer) == expected, answer.body
    assert (answer.header("www-authenticate") or "").startswith("Bearer")
    security_headers(answer)
    assert not SEEN


async def test_the_edge_policy_and_unknown_routes_are_refused_alike(edge: Edge) -> None:
    closed = await edge.send("GET", "/closed/x", who="carol")
    assert error(closed) == (403, "forbidden")
    unknown = await edge.send("GET", "/elsewhere", who="carol")
    assert error(unknown) == (404, "not_found")
    method = await edge.send("DELETE", "/shop/items", who="carol")
    assert method.status in (404, 405)
    assert not SEEN


@pytest.mark.parametrize(
    "path",
    [
        "/shop/../closed",
        "/shop/%2e%2e/closed",
        "/shop/%2E%2E%2Fclosed",
        "//closed",
        "/closed%2F",
        "/shop/..%2fclosed",
        "/shop/.%2e/closed",
        "/Closed",
        "/shop%2f..%2fclosed",
        "/shop/%252e%252e/closed",
        "/shop/..;/closed",
        "/shop\\..\\closed",
    ],
)
async def test_spellings_of_a_denied_path_never_reach_the_upstream(edge: Edge, path: str) -> None:
    answer = await edge.send("GET", path, who="carol")
    assert answer.status in (400, 403, 404), (path, answer.status, answer.body)
    assert all(not str(s["path"]).startswith("/closed") for s in SEEN), SEEN


async def test_rate_limits_hold_alike(edge: Edge) -> None:
    assert (await edge.send("GET", "/burst")).status == 200
    limited = await edge.send("GET", "/burst")
    assert error(limited) == (429, "rate_limited")
    assert limited.header("retry-after") is not None
    assert len(SEEN) == 1


async def test_an_upstream_error_is_answered_in_the_gateway_s_shape(edge: Edge) -> None:
    answer = await edge.send("GET", "/shop/fail", who="carol")
    assert answer.status == 500
    assert b"Traceback" not in answer.body
    body = json.loads(answer.body)
    assert set(body) == {"error", "message"}
    security_headers(answer)


async def test_an_upstream_error_keeps_the_headers_that_tell_the_client_what_to_do(
    edge: Edge,
) -> None:
    busy = await edge.send("GET", "/shop/busy", who="carol")
    assert error(busy) == (503, "unavailable"), busy.body
    assert busy.header("retry-after") == "7"
    assert busy.header("x-internal") is None
    readonly = await edge.send("GET", "/shop/readonly", who="carol")
    assert readonly.status == 405
    assert readonly.header("allow") == "GET, HEAD"
    assert error(readonly) == (405, "method_not_allowed")  # the upstream's body withheld


ORIGIN = ("Origin", "https://shop.example")


async def test_a_cors_preflight_is_answered_at_the_edge_alike(edge: Edge) -> None:
    asked = [ORIGIN, ("Access-Control-Request-Method", "POST")]
    granted = await edge.send(
        "OPTIONS", "/web/x", headers=[*asked, ("Access-Control-Request-Headers", "content-type")]
    )
    assert granted.status == 204, (granted.body, proxy_log(edge))
    assert granted.header("access-control-allow-origin") == "https://shop.example"
    assert granted.header("access-control-allow-methods") == "GET, POST"
    assert granted.header("access-control-allow-credentials") == "true"
    assert granted.header("access-control-max-age") == "600"
    assert granted.header("vary") == "Origin"
    security_headers(granted)
    other = [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")]
    refused = await edge.send("OPTIONS", "/web/x", headers=other)
    assert refused.status == 403
    assert refused.header("access-control-allow-origin") is None
    wrong = await edge.send(
        "OPTIONS", "/web/x", headers=[ORIGIN, ("Access-Control-Request-Method", "DELETE")]
    )
    assert wrong.status == 403
    assert not SEEN  # a preflight never reaches the service


async def test_cors_grants_on_an_answer_are_the_gateway_s_alike(edge: Edge) -> None:
    allowed = await edge.send("GET", "/web/cors", who="carol", headers=[ORIGIN])
    assert allowed.status == 200, (allowed.body, proxy_log(edge))
    assert allowed.headers.count(("access-control-allow-origin", "https://shop.example")) == 1
    assert allowed.header("access-control-allow-credentials") == "true"
    assert allowed.header("access-control-max-age") is None  # the upstream's, withheld
    other = await edge.send(
        "GET", "/web/cors", who="carol", headers=[("Origin", "https://evil.example")]
    )
    assert other.status == 200
    assert other.header("access-control-allow-origin") is None  # not the upstream's "*"
    none = await edge.send("GET", "/web/cors", who="carol")
    assert none.header("access-control-allow-origin") is None
    again = await edge.send("GET", "/web/cors", who="carol", headers=[ORIGIN])  # kept or not
    assert again.header("access-control-allow-origin") == "https://shop.example"
    unauthenticated = await edge.send("GET", "/web/cors", headers=[ORIGIN])
    assert unauthenticated.status == 401


async def test_a_strict_route_forwards_only_its_headers(edge: Edge) -> None:
    answer = await edge.send(
        "GET", "/strict/x", headers=[("X-Tenant", "t1"), ("X-Other", "o"), ("Accept", "a/b")]
    )
    assert answer.status == 200
    (seen,) = SEEN
    headers = dict(seen["headers"])  # type: ignore[arg-type]
    assert headers["x-tenant"] == "t1"
    assert "x-other" not in headers
    assert "accept" not in headers


def strict(seen: dict[str, object]) -> bool:
    """Whether the request reached the upstream through a route that forwards only
    ``x-tenant`` (sent with ``TOLD``)."""
    headers = dict(seen["headers"])  # type: ignore[call-overload]
    assert ("x-tenant" in headers) or ("accept" in headers), headers
    return "accept" not in headers


TOLD = [("X-Tenant", "t1"), ("Accept", "a/b")]


async def test_routes_on_one_path_are_told_apart_by_method_alike(edge: Edge) -> None:
    read = await edge.send("GET", "/menu/today", headers=TOLD)
    assert read.status == 200, read.body
    refused = await edge.send("POST", "/menu/today", headers=TOLD)
    assert error(refused) == (401, "unauthenticated")
    written = await edge.send("POST", "/menu/today", who="carol", headers=TOLD)
    assert written.status == 200, written.body
    assert [strict(seen) for seen in SEEN] == [True, False]


async def test_routes_for_a_host_are_taken_for_that_host_only_alike(edge: Edge) -> None:
    staff = "staff.shop.example"
    desk = await edge.send("GET", "/desk/today", headers=TOLD, host=staff)
    assert desk.status == 200, desk.body
    elsewhere = await edge.send("GET", "/desk/today", headers=TOLD)
    assert error(elsewhere) == (401, "unauthenticated")  # the host-less route's auth
    signed_in = await edge.send("GET", "/desk/today", who="carol", headers=TOLD)
    assert signed_in.status == 200, signed_in.body
    # under a host's longer prefix: that host's route; any other host's falls through to
    # the host-less shorter prefix (not the host's route, not nginx's 502)
    admin = await edge.send("GET", "/desk/admin/x", headers=TOLD, host=f"{staff}:443")
    assert admin.status == 200, admin.body
    other = await edge.send("GET", "/desk/admin/x", headers=TOLD, host="shop.example")
    assert error(other) == (401, "unauthenticated")
    other = await edge.send("GET", "/desk/admin/x", who="carol", headers=TOLD)
    assert other.status == 200, other.body
    assert [strict(seen) for seen in SEEN] == [True, False, True, False]


async def test_a_head_too_large_is_431(edge: Edge) -> None:
    answer = await edge.send("GET", "/ping", headers=[("X-Big", "a" * 65536)])
    assert answer.status == 431
    assert not SEEN
