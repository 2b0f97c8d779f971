"""``trustmesh docs access-matrix``: the demo's matrix holds the decisions shop.cedar
implies — checked by name, and against the author's own expectations in shop.tests.yaml —
a changed policy or declaration changes it, the output is deterministic, and the HTML
page escapes what the declaration and the policies name. The command runs in this
process (``clirig.tm``); the matrix is computed with the gateway's own compiled
policies, nothing is stubbed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from clirig import tm

from trustmesh.cli.access_matrix import AccessMatrix, Cell, access_matrix, sample_path
from trustmesh.config import default_config_path, load_config
from trustmesh.policy.cases import load_cases
from trustmesh.policy.paths import NonCanonicalPath, canonical_path
from trustmesh.policy.routes import Operations
from trustmesh.reasons import Reason


def _shop(tmp_path: Path) -> Path:
    folder = default_config_path().parent
    for name in ("default.yaml", "shop.cedar", "shop.tests.yaml", "shop.openapi.yaml"):
        shutil.copy(folder / name, tmp_path / name)
    return tmp_path / "default.yaml"


def _matrix(config: Path) -> AccessMatrix:
    return access_matrix(load_config(config), config)


def _cell(matrix: AccessMatrix, operation: str, kind: str) -> Cell:
    assert matrix.users is not None
    return matrix.users.cell(operation, kind)


def test_the_demo_matrix_has_the_decisions_of_shop_cedar(tmp_path: Path) -> None:
    matrix = _matrix(_shop(tmp_path))
    users = matrix.users
    assert users is not None
    kinds = [k.label for k in users.kinds]
    assert kinds == ["anonymous", "customer", "support", "admin without MFA", "admin with MFA"]
    assert [op.name for op in users.operations] == [
        "GET /items/{item}",
        "GET /orders",
        "POST /orders",
        "GET /orders/{order_id}",
        "POST /orders/{order_id}/refund",
        "GET /admin/orders",
        "GET /admin/reachability",
    ]
    ordering = _cell(matrix, "POST /orders", "customer")
    assert ordering.allowed
    assert ordering.permits == ("customers-order",)
    refund = "POST /orders/{order_id}/refund"
    for kind in ("customer", "support", "admin without MFA"):
        cell = _cell(matrix, refund, kind)
        assert not cell.allowed, kind
        assert cell.forbids == ("only-admins-refund",), kind
    assert _cell(matrix, refund, "admin with MFA").permits == ("admins-with-mfa",)
    assert not _cell(matrix, "POST /orders", "support").allowed
    no_mfa = _cell(matrix, "GET /orders", "admin without MFA")
    assert not no_mfa.allowed
    assert no_mfa.reason == Reason.POLICY_DENY
    assert not no_mfa.forbids
    admin = _cell(matrix, "GET /admin/orders", "admin without MFA")
    assert admin.forbids == ("admin-routes-need-mfa",)
    probe = _cell(matrix, "GET /admin/reachability", "support")  # the SSRF diagnostic
    assert not probe.allowed
    assert _cell(matrix, "GET /admin/reachability", "admin with MFA").allowed
    # anonymous: the catalogue, and nothing else (refused before any policy)
    allowed = [
        op.name for op, row in zip(users.operations, users.cells, strict=True) if row[0].allowed
    ]
    assert allowed == ["GET /items/{item}"]
    assert _cell(matrix, "GET /items/{item}", "anonymous").permits == ("catalogue-is-public",)
    assert _cell(matrix, "GET /orders", "anonymous").reason == Reason.TOKEN_MISSING
    # a signed-in user on the anonymous route is decided as Anonymous, as at the gateway
    assert _cell(matrix, "GET /items/{item}", "support").as_anonymous
    assert users.context_reads == ("template",)


def test_the_matrix_agrees_with_the_policy_authors_cases(tmp_path: Path) -> None:
    """Every case of shop.tests.yaml that is one cell of the matrix (a principal of one
    kind, a path that is one of the route's operations) expects what the matrix says."""
    config = _shop(tmp_path)
    matrix = _matrix(config)
    users = matrix.users
    assert users is not None
    routes = {r.route_name: r for r in load_config(config).gateway.routes}  # type: ignore[union-attr]
    checked = 0
    for case in load_cases(tmp_path / "shop.tests.yaml"):
        p = case.principal
        if p.type == "Anonymous":
            kind = "anonymous"
        elif p.type == "User" and len(p.roles) == 1:
            role = p.roles[0]
            kind = role if role != "admin" else ("admin with MFA" if p.mfa else "admin without MFA")
        else:
            continue
        route = routes[case.resource]
        try:
            path = canonical_path((case.context.path or route.path).encode())
        except NonCanonicalPath:
            continue  # refused before any policy: no cell of the matrix
        found = Operations(route.operations()).match(case.action, path)
        if found.reason != Reason.ROUTE_MATCHED:
            continue  # refused before any policy: no cell of the matrix
        cell = users.cell(f"{case.action} {found.template}", kind)
        assert cell.allowed == (case.expect == "allow"), case.name
        checked += 1
    assert checked >= 10


def test_a_changed_policy_changes_the_matrix(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    before = tm("docs", "access-matrix", "--config", str(config))
    assert before.returncode == 0, before.stderr
    assert tm("docs", "access-matrix", "--config", str(config)).stdout == before.stdout
    policies = tmp_path / "shop.cedar"
    text = policies.read_text()
    # support loses its read access; customers may now refund (the forbid gone)
    text = text.replace('principal.roles.contains("support")', 'principal.roles.contains("nobody")')
    start = text.index('@id("only-admins-refund")')
    end = text.index("};", start) + 2
    policies.write_text(text[:start] + text[end:])
    after = _matrix(config)
    assert not _cell(after, "GET /orders", "support").allowed
    refund = _cell(after, "POST /orders/{order_id}/refund", "customer")
    assert not refund.allowed
    assert refund.forbids == ()
    changed = tm("docs", "access-matrix", "--config", str(config))
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout != before.stdout
    row = next(line for line in changed.stdout.splitlines() if line.startswith("| GET /orders |"))
    assert "support-reads-orders" not in row


def test_service_calls_and_the_default_deny(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    matrix = _matrix(config)
    declared = {(c.caller, c.callee, c.method, c.pattern) for c in matrix.calls}
    assert ("orders", "payments", "POST", "/charges") in declared
    assert ("gateway", "orders", "POST", "/orders/{order_id}/refund") in declared
    assert all(c.allowed for c in matrix.calls)
    denied = {(d.caller, d.callee): d for d in matrix.denied}
    assert denied[("payments", "orders")].asked == 6  # every operation orders serves
    assert denied[("payments", "orders")].allowed == 0
    assert ("gateway", "payments") in denied  # no route reaches payments
    assert ("orders", "payments") not in denied
    # the declaration grants payments → orders: it leaves the default deny
    text = config.read_text().replace(
        "calls:\n", 'calls:\n  - {from: payments, to: orders, allow: ["GET /orders/{order_id}"]}\n'
    )
    config.write_text(text)
    granted = _matrix(config)
    assert ("payments", "orders") not in {(d.caller, d.callee) for d in granted.denied}
    assert any(c.caller == "payments" and c.allowed for c in granted.calls)
    grants = {(g.identity, g.path): g.capabilities for g in matrix.secrets}
    assert grants[("payments", "secret/data/payments/*")] == ("read",)
    assert sample_path("/orders/{order_id}/refund") == "/orders/example/refund"


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_the_page_escapes_what_the_policies_name(tmp_path: Path, fmt: str) -> None:
    config = _shop(tmp_path)
    policies = tmp_path / "shop.cedar"
    text = policies.read_text()
    policies.write_text(
        text.replace('@id("catalogue-is-public")', '@id("<script>alert(1)</script>|a")')
    )
    out = tmp_path / f"matrix.{fmt}"
    ran = tm("docs", "access-matrix", "--config", str(config), "--format", fmt, "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    page = out.read_text()
    if fmt == "html":
        assert "<script" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;|a" in page
        assert re.search(r"<(link|img|iframe|object)\b", page) is None
        assert "default-src 'none'" in page
        assert page.count("<table>") == 4  # users, calls, the default deny, secrets
    else:
        assert "<script>alert(1)</script>\\|a" in page  # the pipe cannot split a cell
        header = next(line for line in page.splitlines() if line.startswith("| operation"))
        row = next(line for line in page.splitlines() if line.startswith("| GET /items/{item}"))
        assert row.count(" | ") == header.count(" | ")


def test_a_bad_policy_is_a_config_error(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    (tmp_path / "shop.cedar").write_text('permit (principal, action, resource == Route::"/nope");')
    ran = tm("docs", "access-matrix", "--config", str(config))
    assert ran.returncode == 2
    assert "/nope" in ran.stderr or "nope" in ran.stdout + ran.stderr
