"""The gateway's edge policies: user-written Cedar validated against the generated schema,
default deny, RBAC and ABAC, decisions cached only on what the policies read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.policy.edge import (
    ANONYMOUS,
    EdgePolicy,
    EdgeRequest,
    Principal,
    edge_schema,
    load_edge_policy,
)
from trustmesh.reasons import Reason

DECLARATION = """
trust_domain: shop.example
dev: true
auth: {roles: [customer, support]}
services:
  orders: {run: "a:b"}
  inventory: {run: "a:b"}
gateway:
  policies: [edge.cedar]
  routes:
    - {path: /orders, to: orders, methods: [GET, POST]}
    - {path: /admin, to: orders, name: admin}
    - {path: /items, to: inventory, auth: [anonymous]}
"""

NOON = int(dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC).timestamp())  # a Monday


def _load(tmp_path: Path, policies: str, declaration: str = DECLARATION) -> EdgePolicy:
    (tmp_path / "edge.cedar").write_text(policies)
    config = parse_config(declaration, source="trustmesh.yaml")
    policy = load_edge_policy(config, tmp_path)
    assert policy is not None
    return policy


def _ask(
    policy: EdgePolicy,
    principal: Principal,
    method: str = "GET",
    route: str = "/orders",
    *,
    ip: str = "127.0.0.1",
    path: str = "/orders/1",
    time: int = NOON,
    template: str = "/orders/*",
) -> bool:
    request = EdgeRequest(principal, method, route, ip, path, "", "orders", time, template)
    return policy.decide(request).allowed


def _user(*roles: str, mfa: bool = False, sub: str = "u1") -> Principal:
    return Principal("User", sub, roles=tuple(sorted(roles)), mfa=mfa)


def test_schema_lists_routes_methods_and_context() -> None:
    config = parse_config(DECLARATION, source="x")
    assert config.gateway is not None
    schema = edge_schema(config.gateway)
    assert 'entity Route enum ["/items", "/orders", "admin"];' in schema
    assert 'action "GET", "POST" appliesTo' in schema
    assert "ip: ipaddr" in schema
    assert "name: String, issuer: String }" in schema


def test_nothing_declared_means_no_edge_policy(tmp_path: Path) -> None:
    config = parse_config(DECLARATION.replace("  policies: [edge.cedar]\n", ""), source="x")
    assert load_edge_policy(config, tmp_path) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('permit(principal, action, resource == Route::"/nope");', '"/nope"'),
        ('permit(principal, action == Action::"DELETE", resource);', "DELETE"),
        ("permit(principal, action, resource) when { principal.rolez.isEmpty() };", "rolez"),
        ("permit(principal, action, resource) when { context.weather == 1 };", "weather"),
        ('permit(principal is Robot, action, resource == Route::"admin");', "Robot"),
        ("permit(principal, action, resource", "does not parse"),
        ("// nothing but a comment\n", "holds no policy"),
    ],
)
def test_a_policy_naming_what_is_not_declared_fails_the_check(
    tmp_path: Path, text: str, needle: str
) -> None:
    (tmp_path / "edge.cedar").write_text(text)
    config = parse_config(DECLARATION, source="x")
    with pytest.raises(ConfigError) as caught:
        load_edge_policy(config, tmp_path)
    problem = caught.value.problems[0]
    assert problem.startswith("gateway.policies[0]: edge.cedar: ")
    assert needle in problem


def test_a_missing_policy_file_is_named(tmp_path: Path) -> None:
    config = parse_config(DECLARATION, source="x")
    with pytest.raises(ConfigError, match=r"gateway.policies\[0\]: edge.cedar: cannot be read"):
        load_edge_policy(config, tmp_path)


def test_default_deny_and_rbac(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        """
        @id("customers") permit(principal is User, action, resource == Route::"/orders")
          when { principal.roles.contains("customer") };
        @id("support-reads") permit(principal is User, action == Action::"GET",
          resource == Route::"/orders") when { principal.roles.contains("support") };
        """,
    )
    assert _ask(policy, _user("customer"), "POST")
    assert _ask(policy, _user("support"), "GET")
    assert not _ask(policy, _user("support"), "POST")
    assert not _ask(policy, _user(), "GET")  # no role: nothing permits
    assert not _ask(policy, ANONYMOUS, "GET")
    assert not _ask(policy, _user("customer"), "GET", "admin")
    decision = policy.decide(
        EdgeRequest(_user("customer"), "GET", "/orders", "::1", "/", "", "o", 0, "/orders")
    )
    assert decision.reason == Reason.POLICY_ALLOW
    assert decision.policies == ("customers",)


def test_forbid_wins_and_mfa_is_required_for_admin_routes(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        """
        @id("admins") permit(principal is User, action, resource)
          when { principal.roles.contains("admin") };
        @id("admin-needs-mfa") forbid(principal, action, resource == Route::"admin")
          unless { principal.mfa };
        """,
    )
    assert _ask(policy, _user("admin", mfa=True), route="admin")
    assert not _ask(policy, _user("admin", mfa=False), route="admin")
    assert _ask(policy, _user("admin", mfa=False), route="/orders")
    denied = policy.decide(
        EdgeRequest(_user("admin"), "GET", "admin", "::1", "/admin", "", "o", 0, "/admin")
    )
    assert denied.policies == ("admin-needs-mfa",)


def test_abac_on_address_path_and_time(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        """
        permit(principal, action == Action::"GET", resource == Route::"/orders")
          when { context.ip.isInRange(ip("10.0.0.0/8")) && context.path like "/orders/*"
                 && context.hour >= 8 && context.hour < 18 && context.weekday <= 5 };
        """,
    )
    assert _ask(policy, _user(), ip="10.1.2.3")
    assert not _ask(policy, _user(), ip="192.0.2.1")
    assert not _ask(policy, _user(), ip="10.1.2.3", path="/orders")
    assert not _ask(policy, _user(), ip="10.1.2.3", time=NOON + 8 * 3600)  # 20:00
    assert not _ask(policy, _user(), ip="10.1.2.3", time=NOON - 2 * 86400)  # Saturday
    assert policy.context_reads == {"ip", "path", "hour", "weekday"}


def test_claims_become_the_principal() -> None:
    user = Principal.from_claims(
        {
            "sub": "u1",
            "auth_time": 1,
            "roles": ["support", "customer", 3],
            "amr": ["pwd", "otp"],
            "scope": "openid orders",
            "preferred_username": "sam",
        }
    )
    assert user == Principal(
        "User",
        "u1",
        roles=("customer", "support"),
        amr=("otp", "pwd"),
        scopes=("openid", "orders"),
        mfa=True,
        name="sam",
        issuer="trustmesh",
    )
    assert user.issuer == "trustmesh"  # the provider's own token
    client = Principal.from_claims({"sub": "storefront", "client_id": "storefront"})
    assert (client.type, client.mfa, client.roles) == ("Client", False, ())
    # another issuer's: the type and issuer its declaration gives, whatever the claims say
    foreign = Principal.from_claims(
        {"sub": "https://kc.example#u1", "auth_time": 1, "preferred_username": "x"},
        issuer="https://kc.example",
        kind="Client",
    )
    assert (foreign.type, foreign.issuer) == ("Client", "https://kc.example")
    assert ANONYMOUS.issuer == ""
    assert not Principal.from_claims({"sub": "x", "auth_time": 1, "amr": ["pwd"]}).mfa


def test_decisions_are_cached_only_on_what_the_policies_read(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        'permit(principal, action, resource == Route::"/orders") when { context.time < 100 };',
    )
    assert policy.context_reads == {"time"}
    assert _ask(policy, _user(), time=50)
    assert not _ask(policy, _user(), time=150)  # time is part of the key: decided anew
    calls = 0
    evaluate = policy._evaluate

    def counting(request: EdgeRequest) -> object:
        nonlocal calls
        calls += 1
        return evaluate(request)

    policy._evaluate = counting  # type: ignore[method-assign]
    for path in ("/orders/1", "/orders/2", "/orders/3"):  # the path is not read: one decision
        assert _ask(policy, _user(), time=50, path=path)
    assert calls == 0  # already decided above for this principal, route and time
    assert _ask(policy, _user(sub="u2"), time=50)
    assert calls == 1


OPERATIONS = DECLARATION.replace(
    "    - {path: /orders, to: orders, methods: [GET, POST]}\n",
    "    - {path: /orders, to: orders, methods: [GET, POST],\n"
    '       paths: ["/orders", "GET /orders/{order_id}", "POST /orders/{order_id}/refund"]}\n',
)


def test_the_schema_lists_every_template_and_placeholder() -> None:
    config = parse_config(OPERATIONS, source="x")
    assert config.gateway is not None
    schema = edge_schema(config.gateway)
    assert (
        'entity Template enum ["/admin", "/admin/*", "/items", "/items/*", "/orders", '
        '"/orders/{order_id}", "/orders/{order_id}/refund"];'
    ) in schema
    assert 'type Params = { "order_id"?: String };' in schema
    assert "template: Template, params: Params" in schema


@pytest.mark.parametrize(
    ("text", "needle"),
    [  # a template or placeholder no route declares is a config error, not a silent deny
        (
            'permit(principal, action, resource) when { context.template == Template::"/orders/{id}" };',
            "/orders/{id}",
        ),
        (
            'permit(principal, action, resource) when { context.params.order_id == "x" };',
            "order_id",
        ),
        ("permit(principal, action, resource) when { context.params has id };", None),
    ],
)
def test_policies_naming_templates_are_checked(
    tmp_path: Path, text: str, needle: str | None
) -> None:
    (tmp_path / "edge.cedar").write_text(text)
    config = parse_config(OPERATIONS, source="x")
    if needle is None:  # an optional attribute may be tested for, even one never declared
        assert load_edge_policy(config, tmp_path) is not None
        return
    with pytest.raises(ConfigError) as caught:
        load_edge_policy(config, tmp_path)
    assert needle in caught.value.problems[0]
    assert "templates /admin, /admin/*" in caught.value.problems[0]


def test_policies_decide_on_the_template_and_its_values(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        """
        @id("reads") permit(principal is User, action, resource == Route::"/orders")
          when { context.template == Template::"/orders/{order_id}"
                 && context.params has order_id && context.params.order_id like "ord_*" };
        """,
        OPERATIONS,
    )
    assert policy.context_reads == {"template", "params"}

    def ask(template: str, **params: str) -> bool:
        request = EdgeRequest(
            _user(), "GET", "/orders", "::1", "/x", "", "o", NOON, template, tuple(params.items())
        )
        return policy.decide(request).allowed

    assert ask("/orders/{order_id}", order_id="ord_1")
    assert not ask("/orders/{order_id}", order_id="1")  # the values key the cache too
    assert not ask("/orders/{order_id}/refund", order_id="ord_1")
    assert not ask("/orders")
