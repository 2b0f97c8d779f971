"""The injection filter's crs mode at a live gateway: the OWASP Core Rule Set refuses an
attack in the query, a form field, a JSON string or a header with 403
``request-injection``, its category and anomaly score in the event, before the upstream
sees it; benign requests pass; paranoia is per route; a route whose filter only logs
lets the request through and records what it would have refused."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_asyncio
from edgerig import Edge, edge_stack, recording, refused_as_injection
from liverig import live_identity
from services import require_crs

from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  waf: {mode: crs}
  routes:
    - {path: /shop, to: orders, auth: [anonymous], methods: [GET, POST, PATCH]}
    - {path: /strict, to: orders, auth: [anonymous], methods: [GET],
       waf: {mode: crs, paranoia: 2}}
    - {path: /watch, to: orders, auth: [anonymous], methods: [GET],
       waf: {mode: crs, action: log}}
    - {path: /trial, to: orders, auth: [anonymous], methods: [GET], modes: {waf: dry-run}}
"""
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
JSON_TYPE = [("Content-Type", "application/json")]
SEEN: list[str] = []


#: The tests that only send requests share one stack; each test runs on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    require_crs()
    yield from live_identity(module_tmp, SECTION)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_edge(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Edge]:
    async with edge_stack(identity, module_tmp, SECTION, recording(SEEN), {}) as running:
        yield running


@pytest.fixture
def edge(shared_edge: Edge) -> Edge:
    """The module's stack, with nothing yet seen by its upstream or recorded by its
    gateway in this test."""
    SEEN.clear()
    shared_edge.sink.events.clear()
    return shared_edge


@pytest_asyncio.fixture(loop_scope="module")
async def own_edge(short_tmp: Path) -> AsyncIterator[Edge]:
    """A stack of the test's own: it makes the inspection workers miss their deadline."""
    require_crs()
    SEEN.clear()
    with contextlib.contextmanager(live_identity)(short_tmp, SECTION) as identity:
        async with edge_stack(identity, short_tmp, SECTION, recording(SEEN), {}) as running:
            yield running


def q(value: str) -> str:
    return quote(value, safe="")


ATTACKS = [
    ("GET", f"/shop?id={q(chr(39) + ' OR 1=1--')}", [], b"", "sqli", "query.id"),
    ("GET", f"/shop?file={q('../../../etc/passwd')}", [], b"", "traversal", "query.file"),
    ("GET", f"/shop?host={q('127.0.0.1; cat /etc/shadow')}", [], b"", "cmdi", "query.host"),
    ("POST", "/shop", FORM, b"c=" + q("<script>alert(1)</script>").encode(), "xss", "form.c"),
    (
        "POST",
        "/shop",
        JSON_TYPE,
        json.dumps({"order": {"note": "1 UNION SELECT password FROM users--"}}).encode(),
        "sqli",
        "body/order/note",
    ),
    (
        "GET",
        "/shop",
        [("Referer", "http://a.example/?x=<script>alert(1)</script>")],
        b"",
        "xss",
        "header.referer",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "category", "location"),
    ATTACKS,
    ids=[f"{a[4]}-{a[5]}" for a in ATTACKS],
)
async def test_an_attack_is_refused_before_the_upstream(
    edge: Edge,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    category: str,
    location: str,
) -> None:
    event = await refused_as_injection(edge, method, path, headers, body, category, location)
    assert SEEN == []
    assert event.attributes["check"].startswith("crs-9")
    assert event.attributes["score"] >= 5
    assert "script" not in event.to_json()


async def test_benign_requests_pass(edge: Edge) -> None:
    benign = [
        ("GET", f"/shop?name={q(chr(39).join(['O', 'Brien']))}&city=Arsenal", [], b""),
        ("POST", "/shop", FORM, b"comment=" + q("select your size; then order").encode()),
        ("POST", "/shop", JSON_TYPE, json.dumps({"name": "Zoë", "note": "2 > 1"}).encode()),
        ("PATCH", "/shop", JSON_TYPE, b'{"qty": 2}'),
    ]
    for method, path, headers, body in benign:
        answer = await edge.send(method, path, headers=headers, body=body)
        assert answer.status == 200, (path, answer.body)
    assert len(SEEN) == len(benign)
    assert "request-injection" not in edge.reasons()


async def test_paranoia_is_per_route(edge: Edge) -> None:
    prose = f"?q={q('I <3 this tea & the mugs')}"  # what paranoia 2 takes for SQL
    assert (await edge.send("GET", "/shop" + prose)).status == 200
    assert (await edge.send("GET", "/strict" + prose)).status == 403
    assert SEEN == ["/shop"]


async def test_a_route_that_logs_or_runs_dry_lets_the_attack_through(edge: Edge) -> None:
    attack = f"?q={q(chr(39) + ' OR 1=1--')}"
    assert (await edge.send("GET", "/watch" + attack)).status == 200
    assert (await edge.send("GET", "/trial" + attack)).status == 200
    assert SEEN == ["/watch", "/trial"]
    logged = [e for e in edge.sink.events if e.reason.value == "request-injection"]
    assert [(e.decision.value, e.attributes["route"]) for e in logged] == [
        ("would-deny", "routes[2]"),
        ("would-deny", "routes[3]"),
    ]
    assert {e.attributes["category"] for e in logged} == {"sqli"}


async def test_a_body_over_the_crs_limit_is_refused_not_passed_uninspected(edge: Edge) -> None:
    body = b"c=" + b"a" * (33 << 10)  # over the default 32 KiB the rules inspect
    answer = await edge.send("POST", "/shop", headers=FORM, body=body)
    assert answer.status == 413
    assert json.loads(answer.body)["error"] == "request_too_large"
    assert SEEN == []


async def test_the_workers_inspect_and_a_request_without_a_verdict_is_refused(
    own_edge: Edge,
) -> None:
    edge = own_edge
    pipeline = edge.gateway.pipeline
    assert pipeline is not None
    workers = pipeline.app.crs_workers  # gateway.crs_workers: 2 by default
    assert workers is not None
    assert len(workers.pids()) == 2
    assert os.getpid() not in workers.pids()
    assert (await edge.send("GET", "/shop?q=tea")).status == 200
    workers.deadline = 0.0005  # no verdict comes in time: refused, never passed
    answer = await edge.send("GET", "/shop?q=green+tea")
    assert answer.status == 503, answer.body
    assert json.loads(answer.body)["error"] == "unavailable"
    (event,) = [e for e in edge.sink.events if e.reason == Reason.INSPECTION_UNAVAILABLE]
    assert event.decision.value == "error"
    assert SEEN == ["/shop"]
    workers.deadline = 30
    assert workers.replaced >= 1
    assert (await edge.send("GET", "/shop?q=tea")).status == 200  # a fresh worker


IN_PROCESS = SECTION.replace("gateway:\n", "gateway:\n  crs_workers: 0\n", 1)


async def test_without_workers_the_gateway_inspects_itself(short_tmp: Path) -> None:
    require_crs()
    SEEN.clear()
    with contextlib.contextmanager(live_identity)(short_tmp, IN_PROCESS) as identity:
        async with edge_stack(identity, short_tmp, IN_PROCESS, recording(SEEN), {}) as edge:
            pipeline = edge.gateway.pipeline
            assert pipeline is not None
            assert pipeline.app.crs_workers is None
            attack = await edge.send("GET", f"/shop?id={q(chr(39) + ' OR 1=1--')}")
            assert attack.status == 403, attack.body
            assert (await edge.send("GET", "/shop?q=green+tea")).status == 200
            assert SEEN == ["/shop"]
