"""``trustmesh policy test|schema`` and the policy check in ``config check`` and ``up``. The
command runs in this process (``clirig.tm``), but for ``up``, which runs as a real process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clirig import tm

from trustmesh.config import default_config_path
from trustmesh.testing import run_cli


def _shop(tmp_path: Path) -> Path:
    """A copy of the packaged demo declaration with its policies and their cases."""
    folder = default_config_path().parent
    for name in ("default.yaml", "shop.cedar", "shop.tests.yaml", "shop.openapi.yaml"):
        shutil.copy(folder / name, tmp_path / name)
    return tmp_path / "default.yaml"


def test_the_demo_policies_pass_their_cases(tmp_path: Path) -> None:
    result = tm("policy", "test", "--config", str(_shop(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == 0
    assert report["passed"] >= 12
    by_name = {case["name"]: case for case in report["cases"]}
    denied = by_name["an admin without MFA cannot reach the admin routes"]
    assert denied["decision"] == "deny"
    assert denied["policies"] == ["admin-routes-need-mfa"]
    assert denied["reason"] == "policy-deny"
    # another spelling of a refund is no operation: the gateway refuses it before any policy
    slashed = by_name["a refund with a trailing slash is refused"]
    assert (slashed["decision"], slashed["reason"]) == ("deny", "path-non-canonical")
    assert by_name["a refund in capitals is refused"]["reason"] == "route-not-found"
    refund = by_name["a customer may not refund"]
    assert refund["policies"] == ["only-admins-refund"]  # decided on the template


def test_a_case_refused_before_any_policy_says_so(tmp_path: Path) -> None:
    result = tm("policy", "test", "--config", str(_shop(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert (
        "PASS  a refund with a trailing slash is refused: deny (path-non-canonical: refused "
        "before any policy) (expected deny)"
    ) in result.stdout


def test_a_failing_case_fails_the_run(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    cases = tmp_path / "shop.tests.yaml"
    cases.write_text(
        cases.read_text()
        + "\n- {name: support refunds, principal: {roles: [support], id: s}, action: POST,"
        " resource: /orders, context: {path: /orders/o1/refund}, expect: allow}\n"
    )
    result = tm("policy", "test", "--config", str(config))
    assert result.returncode == 1
    assert "FAIL  support refunds: deny by only-admins-refund (expected allow)" in result.stdout


def test_a_case_naming_an_unknown_route_is_bad_config(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    (tmp_path / "shop.tests.yaml").write_text(
        "- {name: x, action: GET, resource: /nowhere, expect: deny}\n"
    )
    result = tm("policy", "test", "--config", str(config))
    assert result.returncode == 2
    assert "resource '/nowhere' is not a route" in result.stderr


def test_config_check_and_up_refuse_a_policy_naming_an_unknown_route(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    (tmp_path / "shop.cedar").write_text(
        'permit (principal, action, resource == Route::"/refunds");\n'
    )
    checked = tm("config", "check", "--config", str(config))
    assert checked.returncode == 2
    assert "gateway.policies[0]: shop.cedar:" in checked.stderr
    assert '"/refunds"' in checked.stderr
    started = run_cli("up", "--detach", "--config", str(config), "--state", str(tmp_path / "st"))
    assert started.returncode == 2
    assert "shop.cedar" in started.stderr
    assert not (tmp_path / "st").exists() or not any((tmp_path / "st").iterdir())


def test_schema_is_generated_from_the_declaration(tmp_path: Path) -> None:
    result = tm("policy", "schema", "--config", str(_shop(tmp_path)))
    assert result.returncode == 0
    assert 'entity Route enum ["/admin", "/items", "/orders"];' in result.stdout
    assert '"/orders/{order_id}/refund"' in result.stdout
    assert 'type Params = { "item"?: String, "order_id"?: String };' in result.stdout
    assert "template: Template, params: Params" in result.stdout
    assert "context: RequestContext" in result.stdout
    assert "entity User = { roles: Set<String>," in result.stdout
    assert "name: String, issuer: String };" in result.stdout


def test_cases_see_the_issuer_the_gateway_would(tmp_path: Path) -> None:
    """Unset, a case's principal is the provider's (``trustmesh``; ``""`` when anonymous),
    as the gateway has it; a case names another issuer with ``issuer``."""
    config = _shop(tmp_path)
    (tmp_path / "shop.cedar").write_text(
        '@id("ours") permit (principal, action, resource == Route::"/items")\n'
        '  when { principal.issuer == "trustmesh" };\n'
        '@id("nobodys") permit (principal, action, resource == Route::"/admin")\n'
        '  when { principal.issuer == "" };\n'
    )
    (tmp_path / "shop.tests.yaml").write_text(
        "- {name: ours, principal: {id: u}, action: GET, resource: /items,"
        " context: {path: /items/tea}, expect: allow}\n"
        "- {name: theirs, principal: {id: u, issuer: 'https://kc.example'}, action: GET,"
        " resource: /items, context: {path: /items/tea}, expect: deny}\n"
        "- {name: anonymous, principal: {type: Anonymous}, action: GET, resource: /admin,"
        " context: {path: /admin/orders}, expect: allow}\n"
        "- {name: a client, principal: {type: Client, id: c}, action: GET, resource: /admin,"
        " context: {path: /admin/orders}, expect: deny}\n"
    )
    result = tm("policy", "test", "--config", str(config), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["passed"] == 4


def test_config_check_refuses_a_policy_naming_an_undeclared_template(tmp_path: Path) -> None:
    config = _shop(tmp_path)
    shop = tmp_path / "shop.cedar"
    shop.write_text(shop.read_text().replace("/orders/{order_id}/refund", "/orders/{id}/refund"))
    checked = tm("config", "check", "--config", str(config))
    assert checked.returncode == 2
    assert "gateway.policies[0]: shop.cedar:" in checked.stderr
    assert '"/orders/{id}/refund"' in checked.stderr
