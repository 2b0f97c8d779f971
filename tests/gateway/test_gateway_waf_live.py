"""The injection filter and dry-run at a live gateway: an attack in the query, a form
field, a JSON string or a header is refused with 403 ``request-injection`` and its
category before the upstream sees it; benign text passes; a route whose filter only
logs, or whose controls run dry, lets the request through and records what it would
have refused (``would-deny``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_asyncio
from edgerig import Edge, edge_stack, recording, refused_as_injection
from liverig import live_identity
from typer.testing import CliRunner

from trustmesh.cli import app as cli
from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  policies: [edge.cedar]
  routes:
    - {path: /shop, to: orders, auth: [anonymous], methods: [GET, POST]}
    - {path: /raw, to: orders, auth: [anonymous], methods: [GET, POST], waf: {mode: "off"}}
    - {path: /watch, to: orders, auth: [anonymous], methods: [GET, POST],
       waf: {action: log}}
    - {path: /trial, to: orders, auth: [anonymous], methods: [POST], schema: item.schema.json,
       modes: {validation: dry-run, waf: dry-run}}
    - {path: /burst, to: orders, auth: [anonymous], methods: [GET],
       rate_limits: [{per: ip, limit: 1/minute}], modes: {rate_limits: dry-run}}
    - {path: /closed, to: orders, auth: [anonymous], methods: [GET]}
    - {path: /shadow, to: orders, auth: [anonymous], methods: [GET], modes: {policy: dry-run}}
"""
POLICIES = """
permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/closed*" || context.path like "/shadow*" };
"""
ITEM = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
JSON_TYPE = [("Content-Type", "application/json")]


SEEN: list[str] = []


#: The tests only send requests (the dry rate limit's route, one of them): they share one
#: stack, on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(module_tmp, SECTION)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_edge(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Edge]:
    files = {"edge.cedar": POLICIES, "item.schema.json": json.dumps(ITEM)}
    async with edge_stack(identity, module_tmp, SECTION, recording(SEEN), files) as running:
        yield running


@pytest.fixture
def edge(shared_edge: Edge) -> Edge:
    """The module's stack, with nothing yet seen by its upstream or recorded by its
    gateway in this test."""
    SEEN.clear()
    shared_edge.sink.events.clear()
    return shared_edge


def q(value: str) -> str:
    return quote(value, safe="")


ATTACKS = [
    ("GET", f"/shop?q={q(chr(39) + ' OR 1=1--')}", [], b"", "sqli", "query.q"),
    ("GET", f"/shop?file={q('../../../etc/shadow')}", [], b"", "traversal", "query.file"),
    ("GET", f"/shop?host={q('127.0.0.1 && whoami')}", [], b"", "cmdi", "query.host"),
    (
        "POST",
        "/shop",
        FORM,
        b"comment=" + q("<svg onload=alert(document.domain)>").encode(),
        "xss",
        "form.comment",
    ),
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
        [("User-Agent", "<script>alert(1)</script>")],
        b"",
        "xss",
        "header.user-agent",
    ),
    ("GET", f"/shop?next={q(q('../../etc/passwd'))}", [], b"", "traversal", "query.next"),
    (  # a key given twice: the value a last-wins parser drops is inspected too
        "POST",
        "/shop",
        JSON_TYPE,
        b'{"note": "1 UNION SELECT password FROM users--", "note": "tea"}',
        "sqli",
        "body/note",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "category", "location"),
    ATTACKS,
    ids=[f"{a[4]}-{a[5]}-{i}" for i, a in enumerate(ATTACKS)],
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
    await refused_as_injection(edge, method, path, headers, body, category, location)
    assert SEEN == []


BENIGN = [
    ("GET", f"/shop?name={q(chr(39).join(['O', 'Brien']))}&city=Arsenal%20canal", [], b""),
    ("GET", f"/shop?q={q('select your size; then order')}", [], b""),
    ("POST", "/shop", FORM, b"comment=" + q("I <3 this tea & the mugs").encode()),
    (
        "POST",
        "/shop",
        JSON_TYPE,
        json.dumps({"name": "Zoë 🍵", "note": "2 > 1, and 50% off"}).encode(),
    ),
]


async def test_benign_requests_pass(edge: Edge) -> None:
    for method, path, headers, body in BENIGN:
        answer = await edge.send(method, path, headers=headers, body=body)
        assert answer.status == 200, (path, answer.body)
    assert len(SEEN) == len(BENIGN)
    assert "request-injection" not in edge.reasons()


async def test_a_route_with_the_filter_off_or_logging_lets_an_attack_through(edge: Edge) -> None:
    attack = f"?q={q(chr(39) + ' OR 1=1--')}"
    assert (await edge.send("GET", "/raw" + attack)).status == 200
    assert (await edge.send("GET", "/watch" + attack)).status == 200
    assert SEEN == ["/raw", "/watch"]
    (logged,) = [e for e in edge.sink.events if e.reason.value == "request-injection"]
    assert logged.decision.value == "would-deny"
    assert logged.attributes["control"] == "waf"
    assert logged.attributes["route"] == "routes[2]"
    assert logged.attributes["category"] == "sqli"


async def test_controls_in_dry_run_let_the_request_through_and_say_what_they_would_refuse(
    edge: Edge,
) -> None:
    # validation and the filter, dry: an invalid body carrying an attack reaches the service
    body = json.dumps({"name": 7, "note": "<script>alert(1)</script>"}).encode()
    assert (await edge.send("POST", "/trial", headers=JSON_TYPE, body=body)).status == 200
    # a rate limit, dry: the second request within the minute passes
    assert (await edge.send("GET", "/burst")).status == 200
    assert (await edge.send("GET", "/burst")).status == 200
    # the policy: enforced on one route, dry on the other
    assert (await edge.send("GET", "/closed")).status == 403
    assert (await edge.send("GET", "/shadow")).status == 200
    assert SEEN == ["/trial", "/burst", "/burst", "/shadow"]
    would = {
        (e.attributes["control"], e.reason.value, e.attributes["route"])
        for e in edge.sink.events
        if e.decision.value == "would-deny"
    }
    assert would == {
        ("validation", "request-invalid", "routes[3]"),
        ("waf", "request-injection", "routes[3]"),
        ("rate_limits", "rate-limited", "routes[4]"),
        ("policy", "policy-deny", "routes[6]"),
    }
    denied = [e for e in edge.sink.events if e.decision.value == "deny"]
    assert [(e.reason.value, e.attributes["route"]) for e in denied] == [
        ("policy-deny", "routes[5]")
    ]


async def test_the_dry_run_report_says_per_control_and_route_what_would_be_refused(
    edge: Edge, tmp_path: Path
) -> None:
    for _ in range(3):
        await edge.send("GET", "/shadow")
    await edge.send("POST", "/trial", headers=JSON_TYPE, body=b'{"name": 7}')
    await edge.send("GET", f"/watch?q={q(chr(39) + ' OR 1=1--')}")
    log = tmp_path / "gateway.jsonl"
    log.write_text("".join(e.to_json() + "\n" for e in edge.sink.events))
    runner = CliRunner()
    result = runner.invoke(cli, ["gateway", "dry-run", "report", "--events", str(log), "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]
    summary = [(g["control"], g["route"], g["reason"], g["count"]) for g in groups]
    assert summary == [
        ("policy", "routes[6]", "policy-deny", 3),
        ("validation", "routes[3]", "request-invalid", 1),
        ("waf", "routes[2]", "request-injection", 1),
    ]
    validation = groups[1]["samples"][0]
    assert (validation["method"], validation["path"]) == ("POST", "/trial")
    assert validation["violation"] == "body/name type"
    waf = groups[2]["samples"][0]
    assert (waf["category"], waf["location"]) == ("sqli", "query.q")
    assert "OR 1=1" not in result.stdout  # the path is there, never the query's values
    table = runner.invoke(cli, ["gateway", "dry-run", "report", "--events", str(log)])
    assert table.exit_code == 0
    assert "policy-deny" in table.stdout
    # the same events two days old: none in the last day, and it says so
    old = tmp_path / "old.jsonl"
    aged = [json.loads(e.to_json()) for e in edge.sink.events]
    old.write_text(
        "".join(json.dumps({**e, "time": e["time"] - 2 * 86_400_000}) + "\n" for e in aged)
    )
    quiet = runner.invoke(
        cli, ["gateway", "dry-run", "report", "--events", str(old), "--since", "1d"]
    )
    assert quiet.exit_code == 0, quiet.output
    assert "no control running dry would have refused a request" in quiet.stdout
    missing = runner.invoke(cli, ["gateway", "dry-run", "report", "--state", str(tmp_path)])
    assert missing.exit_code != 0
