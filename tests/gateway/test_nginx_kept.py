"""nginx keeping the authorizer's decisions (``gateway.nginx.decision_ttl``, issue 18):
an allowed decision is answered again without asking, per credential, method, URI, host
and client; a refusal never is; nginx counts each consumer's limits itself (across the
decisions it keeps) where it can, and the authorizer counts every request where it
cannot; the request's trace is nginx's, in the authorizer's events and at the upstream;
a new declaration keeps nothing of the old one's decisions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from authrig import CONFIG, sign_in_user
from edgerig import Edge, edge_stack
from liverig import GATEWAY, live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.config import parse_config
from trustmesh.gateway.nginx import NginxEdge
from trustmesh.testing import RunningIdentityServer

pytestmark = pytest.mark.usefixtures("nginx_available")

SECTION = """auth: {roles: [customer]}
gateway:
  engine: nginx
  nginx: {decision_ttl: 30s}
  policies: [edge.cedar]
  waf: {mode: "off"}
  routes:
    - {path: /shop, to: orders, auth: [jwt], methods: [GET],
       rate_limits: [{per: consumer, limit: 3/minute}]}
    - {path: /ping, to: orders, auth: [anonymous], methods: [GET]}
    - {path: /burst, to: orders, auth: [anonymous], methods: [GET],
       rate_limits: [{per: ip, limit: 2/minute}]}
    - {path: /options, to: orders, auth: [anonymous], methods: [GET, OPTIONS]}
"""
POLICIES = """
permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/shop/closed*" };
"""
SEEN: list[dict[str, str]] = []


def recorder() -> Starlette:
    async def record(request: Request) -> Response:
        SEEN.append({k.decode(): v.decode() for k, v in request.scope["headers"]})
        return JSONResponse({"reached": request.url.path})

    return Starlette(routes=[Route("/{p:path}", record, methods=["GET", "OPTIONS"])])


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
async def edge(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Edge]:
    SEEN.clear()
    async with edge_stack(
        identity, short_tmp, SECTION, recorder(), {"edge.cedar": POLICIES}
    ) as running:
        for user in ("carol", "dave"):
            running.tokens[user] = await asyncio.to_thread(
                sign_in_user, running.rig, user, ["customer"], audience=GATEWAY
            )
        for _ in range(100):
            if (await running.send("GET", "/ping")).status == 200:
                break
            await asyncio.sleep(0.1)
        assert await nginx(running).engine.settled(), nginx(running).engine.error_log_tail()
        SEEN.clear()
        running.sink.events.clear()
        yield running


def nginx(edge: Edge) -> NginxEdge:
    public = edge.gateway.public
    assert isinstance(public, NginxEdge)
    return public


def asked(edge: Edge, path: str) -> list[events.Event]:
    """The authorizer's allowed decisions about ``path`` (each time it was asked), on a
    route whose limits it counts: it records them itself."""
    return [
        e
        for e in edge.sink.events
        if e.reason.value == "policy-allow"
        and e.attributes.get("path") == path
        and e.attributes.get("engine") == "authorizer"
    ]


async def answered_by_nginx(edge: Edge, count: int) -> list[events.Event]:
    """The events nginx recorded (read from its kept.log) of the requests to ``/shop``,
    a route whose limit it counts: every request the authorizer did not refuse, each
    once, with the outcome — answered from a kept decision (``kept``) or decided by the
    authorizer just now — once there are ``count`` of them (nginx flushes the log each
    second). The authorizer records no allowed decision there."""

    def found() -> list[events.Event]:  # (the fixture's own /ping may come late)
        return [
            e
            for e in edge.sink.events
            if e.attributes.get("engine") == "nginx"
            and str(e.attributes["path"]).startswith("/shop")
        ]

    for _ in range(100):
        if len(found()) >= count:
            break
        await asyncio.sleep(0.1)
    assert len(found()) == count, [(e.reason, e.attributes) for e in found()]
    assert not [e for e in asked_anywhere(edge) if str(e.attributes["path"]).startswith("/shop")]
    return found()


def asked_anywhere(edge: Edge) -> list[events.Event]:
    return [
        e
        for e in edge.sink.events
        if e.reason.value == "policy-allow" and e.attributes.get("engine") == "authorizer"
    ]


def outcomes(recorded: list[events.Event]) -> list[tuple[str, bool, int]]:
    return [
        (str(e.attributes["path"]), e.attributes["kept"], e.attributes["status"]) for e in recorded
    ]


async def test_an_allowed_decision_is_kept_and_a_refusal_never_is(edge: Edge) -> None:
    first = await edge.send("GET", "/shop/a", who="carol")
    again = await edge.send("GET", "/shop/a", who="carol")
    assert (first.status, again.status) == (200, 200), (first.body, again.body)
    assert SEEN[0]["authorization"] == SEEN[1]["authorization"]  # the kept internal token
    # another URI, another user, another host: each asked about on its own
    assert (await edge.send("GET", "/shop/b", who="carol")).status == 200
    assert (await edge.send("GET", "/shop/a", who="dave")).status == 200
    assert SEEN[-1]["authorization"] != SEEN[0]["authorization"]
    # refusals: asked every time
    bad = [("Authorization", "Bearer " + edge.tokens["carol"][:-4] + "AAAA")]
    for _ in range(2):
        assert (await edge.send("GET", "/shop/a", headers=bad)).status == 401
    closed = [await edge.send("GET", "/shop/closed", who="carol") for _ in range(2)]
    assert [a.status for a in closed] == [403, 403]
    assert len(SEEN) == 4  # no refused request reached the upstream
    # one event per allowed request, the second answered by nginx from the kept decision
    recorded = await answered_by_nginx(edge, 4)
    assert outcomes(recorded) == [
        ("/shop/a", False, 200),
        ("/shop/a", True, 200),
        ("/shop/b", False, 200),
        ("/shop/a", False, 200),
    ]
    assert [e.trace_id for e in recorded] == [s["traceparent"].split("-")[1] for s in SEEN]
    refused = [e.reason.value for e in edge.sink.events if e.decision != events.Decision.ALLOW]
    assert refused == ["token-bad-signature"] * 2 + ["policy-deny"] * 2, refused
    kept = recorded[1]
    assert kept.decision == events.Decision.ALLOW
    assert kept.reason.value == "policy-allow"
    assert kept.sub == recorded[0].sub is not None
    # nginx's trace ids begin with the time in ms, as the gateway's do (13 decimal digits)
    assert abs(int(kept.trace_id[:13]) - kept.time.timestamp() * 1000) < 60_000
    # its uid: the line's time (ms), then the request id's last 80 bits
    assert kept.uid[12:] == kept.trace_id[12:]
    assert int(kept.uid[:12], 16) == round(kept.time.timestamp() * 1000)
    assert kept.attributes["route"] == "routes[0]"
    assert recorded[3].sub != kept.sub  # dave's


async def test_an_ambiguous_key_part_is_never_kept(edge: Edge) -> None:
    """A part of nginx's key given twice, or holding its separator (``|``), could let two
    requests share a key: such a decision is made, and not kept."""
    twice = [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")]
    for headers in ([("X-Forwarded-For", "10.0.0.1|x")], twice):
        for _ in range(2):
            assert (await edge.send("GET", "/ping/x", headers=headers)).status == 200
    assert len(asked(edge, "/ping/x")) == 4
    assert (await edge.send("GET", "/ping/x")).status == 200
    assert (await edge.send("GET", "/ping/x")).status == 200
    assert len(asked(edge, "/ping/x")) == 5  # a plain one is kept


async def test_an_options_request_is_never_kept(edge: Edge) -> None:
    """A CORS preflight is an OPTIONS told apart by headers the key does not hold: no
    OPTIONS decision is kept, so each is asked about (a GET on the same URI is kept)."""
    for method in ("OPTIONS", "OPTIONS", "GET", "GET"):
        assert (await edge.send(method, "/options/x")).status == 200
    decided = [e.attributes["method"] for e in asked(edge, "/options/x")]
    assert decided == ["OPTIONS", "OPTIONS", "GET"]


async def test_nginx_counts_each_consumer_s_limit_across_kept_decisions(edge: Edge) -> None:
    for path in ("/shop/a", "/shop/b", "/shop/a"):  # two kept decisions, three requests
        answer = await edge.send("GET", path, who="carol")
        assert answer.status == 200, answer.body
        policy = answer.header("ratelimit-policy") or ""
        assert policy.startswith('"routes[0].rate_limits[0]";q=3;w=60'), policy
    limited = await edge.send("GET", "/shop/c", who="carol")
    assert limited.status == 429, (limited.body, nginx(edge).engine.error_log_tail())
    assert json.loads(limited.body)["error"] == "rate_limited"
    assert limited.header("retry-after") == "20"  # one more every 60 s / 3
    assert limited.header("x-content-type-options") == "nosniff"
    kept = await edge.send("GET", "/shop/a", who="carol")  # a kept decision: counted too
    assert kept.status == 429
    assert (await edge.send("GET", "/shop/a", who="dave")).status == 200  # another consumer
    assert len(SEEN) == 4
    # one event per request: /shop/c, allowed by the authorizer and refused by nginx's
    # count, is one refusal (no "allowed" beside it)
    recorded = await answered_by_nginx(edge, 6)
    assert outcomes(recorded) == [
        ("/shop/a", False, 200),
        ("/shop/b", False, 200),
        ("/shop/a", True, 200),
        ("/shop/c", False, 429),
        ("/shop/a", True, 429),
        ("/shop/a", False, 200),
    ]
    assert [(e.decision, e.reason.value) for e in recorded[3:5]] == [
        (events.Decision.DENY, "rate-limited"),
        (events.Decision.DENY, "rate-limited"),
    ]
    assert [e for e in edge.sink.events if e.attributes.get("path") == "/shop/c"] == [recorded[3]]
    assert "unexpected status" not in nginx(edge).engine.error_log_tail()


async def test_where_nginx_cannot_count_the_authorizer_counts_every_request(
    edge: Edge,
) -> None:
    statuses = [(await edge.send("GET", "/burst")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert len(asked(edge, "/burst")) == 2
    limited = await edge.send("GET", "/burst")
    assert limited.header("retry-after") is not None
    log = nginx(edge).engine.error_log_tail()
    assert "unexpected status" not in log, log  # auth_request was told 403, not 429


async def test_the_request_s_trace_is_nginx_s_at_the_authorizer_and_the_upstream(
    edge: Edge,
) -> None:
    client_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    answer = await edge.send("GET", "/shop/t", who="carol", headers=[("traceparent", client_trace)])
    assert answer.status == 200
    upstream = SEEN[-1]["traceparent"]
    assert upstream != client_trace  # nobody's but the edge's
    again = await edge.send("GET", "/shop/t", who="carol")  # kept: a trace of its own
    assert again.status == 200
    decision, kept = await answered_by_nginx(edge, 2)
    assert (decision.attributes["kept"], kept.attributes["kept"]) == (False, True)
    assert decision.trace_id == upstream.split("-")[1]
    assert kept.trace_id == SEEN[-1]["traceparent"].split("-")[1] != decision.trace_id
    # where the authorizer records the decision itself, it is under nginx's trace too
    assert (await edge.send("GET", "/ping/t")).status == 200
    (pinged,) = asked(edge, "/ping/t")
    assert pinged.trace_id == SEEN[-1]["traceparent"].split("-")[1]


async def test_a_new_declaration_keeps_none_of_the_old_decisions(
    edge: Edge, short_tmp: Path
) -> None:
    assert (await edge.send("GET", "/shop/a", who="carol")).status == 200
    (short_tmp / "edge.cedar").write_text(
        POLICIES.replace('"/shop/closed*"', '"/shop/a*"'), encoding="utf-8"
    )
    config = parse_config(CONFIG + SECTION, source="reloaded.yaml")
    await edge.gateway.reload(config, short_tmp)  # type: ignore[attr-defined]
    assert await nginx(edge).engine.settled()
    answer = await edge.send("GET", "/shop/a", who="carol")
    assert answer.status == 403, answer.body  # asked again, under the new policy
