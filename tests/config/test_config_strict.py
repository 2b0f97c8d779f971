"""``trustmesh config check --strict``: the shipped declaration passes; each refusal —
a service without a policy, a wildcard allow, a lifetime out of bounds — names its place."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmesh.cli import config_cmd
from trustmesh.config import default_config_path

runner = CliRunner()

BASE = """\
trust_domain: shop.example
dev: true
services:
  orders: {run: "trustmesh.demo.orders:app"}
  payments: {run: "trustmesh.demo.payments:app"}
calls:
  - {from: orders, to: payments, allow: ["POST /charges"]}
gateway:
  policies: [edge.cedar]
  routes:
    - {path: /orders, to: orders, methods: [GET]}
"""
EDGE = 'permit (principal is User, action == Action::"GET", resource == Route::"/orders");\n'


def _check(tmp_path: Path, yaml_text: str = BASE, cedar: str = EDGE) -> tuple[int, list[str]]:
    (tmp_path / "edge.cedar").write_text(cedar, encoding="utf-8")
    path = tmp_path / "trustmesh.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    result = runner.invoke(config_cmd.app, ["check", "--strict", "-c", str(path)])
    return result.exit_code, result.stderr.splitlines()


def test_the_shipped_declaration_passes_strict() -> None:
    path = default_config_path()
    result = runner.invoke(config_cmd.app, ["check", "--strict", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(" (strict)\n")


def test_a_valid_strict_declaration_passes(tmp_path: Path) -> None:
    assert _check(tmp_path) == (0, [])


def test_without_strict_the_same_problems_pass(tmp_path: Path) -> None:
    (tmp_path / "edge.cedar").write_text("permit (principal, action, resource);\n")
    path = tmp_path / "trustmesh.yaml"
    path.write_text(BASE.replace("POST /charges", "* /*"), encoding="utf-8")
    assert runner.invoke(config_cmd.app, ["check", "-c", str(path)]).exit_code == 0


def test_a_service_without_a_policy_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("calls:", '  ledger: {run: "trustmesh.demo.inventory:app"}\ncalls:')
    code, lines = _check(tmp_path, text)
    assert code == 2
    assert lines == [
        f"strict: {tmp_path / 'trustmesh.yaml'}:6: services.ledger: declared without a "
        "policy: no calls item and no gateway route reaches it (expected a calls item or a "
        "gateway route to it, or no such service)",
        f"{tmp_path / 'trustmesh.yaml'}: 1 problem(s) in strict mode",
    ]


def test_an_external_service_needs_no_policy(tmp_path: Path) -> None:
    text = BASE.replace("calls:", "  storefront: {external: true}\ncalls:")
    assert _check(tmp_path, text) == (0, [])


def test_a_gateway_without_policies_is_refused(tmp_path: Path) -> None:
    code, lines = _check(tmp_path, BASE.replace("  policies: [edge.cedar]\n", ""))
    assert code == 2
    assert lines[0].endswith(
        ":8: gateway.policies: not set: each route admits whoever passes its authentication "
        "(expected Cedar policies that decide on every route)"
    )


def test_a_route_no_permit_names_is_refused(tmp_path: Path) -> None:
    text = BASE + "    - {path: /items, to: payments, methods: [GET]}\n"
    code, lines = _check(tmp_path, text)
    assert code == 2
    assert lines[0].endswith(
        ":12: gateway.routes[1]: route '/items' has no permit in gateway.policies: no policy "
        """decides on it (expected a permit naming resource == Route::"/items")"""
    )


@pytest.mark.parametrize("rule", ["* /*", "GET /*"])
def test_a_wildcard_call_is_refused(tmp_path: Path, rule: str) -> None:
    code, lines = _check(tmp_path, BASE.replace("POST /charges", rule))
    assert code == 2
    assert lines[0].endswith(
        f":7: calls[0].allow[0]: '{rule}' lets orders call every path of payments "
        "(expected the routes it needs, e.g. 'GET /items/{id}')"
    )


def test_a_narrow_call_with_a_trailing_wildcard_passes(tmp_path: Path) -> None:
    assert _check(tmp_path, BASE.replace("POST /charges", "GET /charges/*")) == (0, [])


@pytest.mark.parametrize(
    "cedar",
    [
        "permit (principal, action, resource);",
        "permit (principal, action, resource) when { true };",
        "permit (principal, action, resource) unless { false };",
        '@id("everyone-admin")\npermit (principal is User, action, resource);',
    ],
)
def test_a_wildcard_permit_is_refused(tmp_path: Path, cedar: str) -> None:
    code, lines = _check(tmp_path, cedar=EDGE + cedar + "\n")
    assert code == 2
    label = "everyone-admin" if "@id" in cedar else "policy1"
    assert lines[0].endswith(
        f":9: gateway.policies[0]: edge.cedar: permit '{label}' allows every action on "
        "every route with no condition (expected a permit scoped to routes or actions, or "
        "with a condition)"
    )


def test_a_broad_permit_under_a_condition_passes(tmp_path: Path) -> None:
    cedar = "permit (principal is User, action, resource) when { principal.mfa };\n"
    assert _check(tmp_path, cedar=cedar) == (0, [])


@pytest.mark.parametrize(
    ("section", "key", "value", "bounds"),
    [
        ("identity", "max_svid_ttl", "2d", "from 5m to 1d"),
        ("identity", "svid_ttl", "1m", "from 5m to 1d"),
        ("identity", "jwt_svid_ttl", "1h", "from 1m to 15m"),
        ("auth", "access_token_ttl", "30m", "from 1m to 15m"),
    ],
)
def test_a_lifetime_out_of_bounds_is_refused(
    tmp_path: Path, section: str, key: str, value: str, bounds: str
) -> None:
    text = BASE.replace("dev: true\n", f"dev: true\n{section}: {{{key}: {value}}}\n")
    code, lines = _check(tmp_path, text)
    assert code == 2
    side = "shorter" if value == "1m" else "longer"
    assert lines[0].endswith(
        f":3: {section}.{key}: {value} is {side} than strict mode allows (expected {bounds})"
    )


def test_the_gateways_internal_token_lifetime_is_bounded(tmp_path: Path) -> None:
    text = BASE.replace("  policies:", "  internal_token_ttl: 5m\n  policies:")
    code, lines = _check(tmp_path, text)
    assert code == 2
    assert lines[0].endswith(
        ":9: gateway.internal_token_ttl: 5m is longer than strict mode allows "
        "(expected from 10s to 2m)"
    )
