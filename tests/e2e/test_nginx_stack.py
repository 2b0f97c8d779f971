"""`trustmesh up` with nginx serving the edge (``gateway.engine: nginx``) and keeping the
authorizer's allowed decisions (``gateway.nginx.decision_ttl``), the audit collector
running. A signed-in user's requests reach the demo inventory through nginx, asked about
once and then answered from the kept decision; a forged token, a path the edge policy
forbids and one no route serves are refused in the gateway's shape; nginx counts a
consumer's limit and refuses the fourth request. Every request is one event in the audit
log — the authorizer's decisions and those nginx answered itself (read back from its
kept.log), each under the request's own trace, which the service's event shares where
the request reached it. `trustmesh down` leaves no nginx process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from secretscan import UsedSecrets, assert_no_secret_recorded
from test_audit_postgres_stack import _forged, _trustmesh, audit, sign_in_web_user

from trustmesh.testing import run_cli as tm
from trustmesh.testing import until

TD = "edge.example"
GATEWAY = f"spiffe://{TD}/trustmesh/gateway"
INVENTORY = f"spiffe://{TD}/inventory"
CONFIG = """trust_domain: edge.example
dev: true
services:
  inventory: {run: "trustmesh.demo.inventory:app"}
gateway:
  engine: nginx
  nginx: {decision_ttl: 30s}
  waf: {mode: "off"}
  policies: [edge.cedar]
  routes:
    - {path: /items, to: inventory, methods: [GET]}
    - {path: /reservations, to: inventory, methods: [POST],
       rate_limits: [{per: consumer, limit: 3/minute}]}
audit: {checkpoint_every: 10}
"""
POLICIES = """permit(principal, action, resource);
forbid(principal, action, resource) when { context.path like "/items/kettle*" };
"""
REDIRECT = "https://shop.example/cb"
PASSWORD = "a shopper's long passphrase"
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "strict-transport-security")
#: A 32-hex-digit trace id: nginx's $request_id.
TRACE = re.compile(r"[0-9a-f]{32}")


def nginx_available() -> None:
    """nginx with the headers-more module (``.ci/run`` installs them), as the gateway's
    nginx tests need it: skip without, fail where services are required."""
    headers_more = Path("/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so")
    if shutil.which("nginx") is not None and headers_more.exists():
        return
    message = "engine: nginx needs nginx and its headers-more module"
    if os.environ.get("TRUSTMESH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
    pytest.skip(message)


def nginx_masters(state: Path) -> dict[int, int]:
    """The nginx masters whose command line names ``state``: pid → process group."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if argv.startswith("nginx: master") and str(state) in argv:
                found[int(proc.name)] = os.getpgid(int(proc.name))
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile
    return found


def in_groups(groups: set[int]) -> list[int]:
    """The processes (an nginx master or its workers) still in one of ``groups``."""
    alive = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) in groups:
                    alive.append(int(proc.name))
            except ProcessLookupError:
                continue
    return alive


@pytest.fixture
def stack() -> Iterator[tuple[Path, Path, dict[str, Any], UsedSecrets]]:
    """`trustmesh up --detach`: the declaration, the state, `status --json`'s components;
    the caller runs `down` (a failed test's stack goes down here)."""
    nginx_available()
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config, state = root / "trustmesh.yaml", root / "state"
    config.write_text(CONFIG)
    (root / "edge.cedar").write_text(POLICIES)
    try:
        up = tm("up", "--config", str(config), "--state", str(state), "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        status = tm("status", "--config", str(config), "--state", str(state), "--json")
        components = {c["name"]: c for c in json.loads(status.stdout)["components"]}
        yield config, state, components, UsedSecrets()
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


def sign_in(config: Path, state: Path, public: str, used: UsedSecrets) -> str:
    """A user made at the provider, signed in (code + PKCE) as a web client whose tokens
    are for the gateway; the access token."""
    user = f"sam{uuid.uuid4().hex[:6]}"
    return sign_in_web_user(config, state, public, used, user, audience=GATEWAY)


def refused(answer: requests.Response, status: int, error: str) -> None:
    """``answer`` is the gateway's refusal: ``status``, its JSON shape, the security
    headers."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == error, body
    for name in SECURITY_HEADERS:
        assert answer.headers.get(name), (name, dict(answer.headers))


def test_nginx_serves_the_edge_of_the_stack_and_every_request_is_audited(
    stack: tuple[Path, Path, dict[str, Any], UsedSecrets],
) -> None:
    config, state, components, used = stack
    gateway = components["gateway"]
    assert gateway["healthy"] is True, gateway
    assert components["audit"]["healthy"] is True, components["audit"]
    masters = nginx_masters(state)
    assert len(masters) == 1, masters  # nginx serves, named by this stack's state
    token = sign_in(config, state, components["auth"]["public_url"], used)
    forged = _forged(token)
    used.add(forged)
    url = gateway["url"]
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(state / "edge" / "ca.pem")
        s.headers["Authorization"] = f"Bearer {token}"

        def send(method: str, path: str, **kwargs: Any) -> requests.Response:
            return s.request(method, url + path, timeout=30, **kwargs)

        # nginx learns inventory's address from discovery once it runs (1 s at most)
        until(
            lambda: [1] if send("GET", "/items/mug").status_code == 200 else [], "a 200", within=15
        )

        # 1. allowed, then answered again from the kept decision
        for _ in range(3):
            answer = send("GET", "/items/tea")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"item": "tea", "in_stock": 40}
            for name in SECURITY_HEADERS:
                assert answer.headers.get(name), name
        bad = send("GET", "/items/tea", headers={"Authorization": f"Bearer {forged}"})
        refused(bad, 401, "invalid_token")
        assert bad.headers["www-authenticate"].startswith("Bearer")
        refused(send("GET", "/items/kettle"), 403, "forbidden")
        refused(send("GET", "/nowhere"), 404, "not_found")

        # 2. nginx counts the consumer's limit: the fourth reservation is refused
        order = {"item": "tea", "quantity": 1}
        for _ in range(3):
            made = send("POST", "/reservations", json=order)
            assert made.status_code == 201, made.text
        limited = send("POST", "/reservations", json=order)
        refused(limited, 429, "rate_limited")
        assert limited.headers["retry-after"] == "20"  # one more every 60 s / 3

    # 3. one event for each request: the authorizer's, or nginx's own (kept.log)
    ours = {"/items/tea", "/items/kettle", "/nowhere", "/reservations"}
    expected = Counter(
        {
            ("authorizer", "/items/tea", "policy-allow"): 1,
            ("nginx", "/items/tea", "policy-allow"): 2,
            ("authorizer", "/items/tea", "token-bad-signature"): 1,
            ("authorizer", "/items/kettle", "policy-deny"): 1,
            ("authorizer", "/nowhere", "route-not-found"): 1,
            # a route whose limit nginx counts: nginx records each request, once, with
            # its outcome (the authorizer's allowed decision would stand beside nginx's
            # refusal of the fourth)
            ("nginx", "/reservations", "policy-allow"): 3,
            ("nginx", "/reservations", "rate-limited"): 1,
        }
    )

    def of_gateway() -> list[dict[str, Any]]:
        found = [
            e
            for e in audit(state, "events", "--limit", "1000")
            if _trustmesh(e).get("reporter") == GATEWAY
            and _trustmesh(e).get("attributes", {}).get("path") in ours
        ]
        return found if len(found) >= sum(expected.values()) else []

    found = until(of_gateway, "an event for each request", within=10)  # kept.log: read each second
    facts = [_trustmesh(e) for e in found]
    summary = Counter(
        (t["attributes"]["engine"], t["attributes"]["path"], t["reason"]) for t in facts
    )
    assert summary == expected, summary
    (user,) = {t["sub"] for t in facts if t["attributes"]["engine"] == "authorizer" and "sub" in t}
    for event, t in zip(found, facts, strict=True):
        assert TRACE.fullmatch(t["trace_id"]), t
        if t["attributes"]["engine"] == "nginx":  # its event's id is the line's: stored once
            assert event["metadata"]["uid"][12:] == t["trace_id"][12:], event["metadata"]
            assert int(event["metadata"]["uid"][:12], 16) == event["time"], event
            assert (t["sub"], t["client_id"]) == (user, "shop-web"), t
    # each allowed request reached the service under the trace the gateway recorded; no
    # refused one did
    allowed = {t["trace_id"]: t["attributes"]["path"] for t in facts if t["decision"] == "allow"}
    assert len(allowed) == 6, allowed

    def served() -> list[tuple[str, str, str]]:
        found = sorted(
            (t["trace_id"], t["attributes"]["path"], t["reason"])
            for t in map(_trustmesh, audit(state, "events", "--limit", "1000"))
            if t.get("reporter") == INVENTORY and t["attributes"].get("path") in ours
        )
        return found if len(found) >= len(allowed) else []

    reached = until(served, "the service's events", within=10)
    assert reached == sorted((*kv, "policy-allow") for kv in allowed.items()), reached

    # 4. down stops nginx: its master and its workers (its process group) are gone
    groups = set(masters.values())
    assert in_groups(groups), "nginx runs in a process group of its own"
    assert tm("down", "--state", str(state)).returncode == 0
    assert nginx_masters(state) == {}
    assert in_groups(groups) == []
    assert_no_secret_recorded(state, used, at_least=2)
    logs = list((state / "gateway" / "nginx").glob("*.log*"))  # kept.log, error.log
    assert logs, "nginx's logs are kept in the state folder"
    for path in logs:
        assert not [v for v in used.values if v.encode() in path.read_bytes()], path.name
