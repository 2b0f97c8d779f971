"""The ``gateway:`` section: routes to declared services, literal canonical prefixes, an
explicit anonymous, claims that cannot forge what the gateway sets; and the call
``gateway → service`` each route implies, decided by the same Cedar policies as every
other call."""

from __future__ import annotations

import pytest

from trustmesh.config import config_json_schema, parse_config
from trustmesh.errors import ConfigError
from trustmesh.policy.calls import CallAuthorizer

BASE = """trust_domain: shop.example
dev: true
services:
  orders: {run: "shop.orders:app"}
  payments: {run: "shop.payments:app"}
"""


def _config(routes: str, extra: str = "") -> str:
    return BASE + "gateway:\n" + extra + "  routes:\n" + routes


def test_routes_parse_with_safe_defaults() -> None:
    config = parse_config(
        _config(
            "    - {path: /orders, to: orders, methods: [GET, POST]}\n"
            "    - {path: /, to: orders, auth: [anonymous], host: shop.example}\n"
        ),
        source="t.yaml",
    )
    assert config.gateway is not None
    first, second = config.gateway.routes
    assert first.auth == ["jwt"]  # a credential unless the route says otherwise
    assert first.claims == ["roles"]
    assert second.methods == ["GET"]
    assert config.gateway.internal_token_ttl.total_seconds() == 60
    assert config.gateway.trusted_proxies == []  # X-Forwarded-For is believed from no one


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("{path: /orders/, to: orders}", "is not a path prefix"),
        ("{path: orders, to: orders}", "is not a path prefix"),
        ("{path: /a/../b, to: orders}", "has the segment '..'"),
        ("{path: '/a/{id}', to: orders}", "has the segment '{id}'"),
        ("{path: /a%2e, to: orders}", "has the segment"),
        ("{path: /o, to: nope}", "'nope' is not a declared service"),
        ("{path: /o, to: orders, auth: [anonymous, jwt]}", "mixes anonymous"),
        ("{path: /o, to: orders, auth: [password]}", "auth[0]"),
        ("{path: /o, to: orders, claims: [cnf]}", "'cnf' cannot be mapped"),
        ("{path: /o, to: orders, claims: [Roles]}", "'Roles' cannot be mapped"),
        ("{path: /o, to: orders, methods: [TRACE]}", "methods[0]"),
        ("{path: /o, to: orders, methods: [GET, GET]}", "methods repeat"),
        ("{path: /o, to: orders, host: 'Shop.Example:443'}", "is not a host name"),
        ("{path: /o, to: orders, upstream: x}", "upstream"),
        ("{path: /o, to: orders, cors: {origins: ['*'], credentials: true}}", "any site"),
        ("{path: /o, to: orders, cors: {origins: ['https://Shop.Example/']}}", "is not an origin"),
        ("{path: /o, to: orders, cors: {origins: []}}", "cors.origins"),
        (
            "{path: /o, to: orders, cors: {origins: ['https://a.example'], headers: [X_Y]}}",
            "not a header",
        ),
        ("{path: /o, to: orders, allow_ips: [not-a-cidr]}", "allow_ips[0]"),
        ("{path: /o, to: orders, deny_ips: ['fe80::1%eth0/128']}", "has a zone index"),
        ("{path: /o, to: orders, paths: [/p]}", "'/p' is not under the route's path '/o'"),
        ("{path: /o, to: orders, paths: [/ox]}", "is not under the route's path"),
        ("{path: /o, to: orders, paths: ['POST /o']}", "names POST, not a method"),
        ("{path: /o, to: orders, paths: ['TRACE /o']}", "names the method 'TRACE'"),
        ("{path: /o, to: orders, paths: ['/o//x']}", "has an empty segment"),
        ("{path: /o, to: orders, paths: ['/o/*/x']}", "'*' before its last segment"),
        ("{path: /o, to: orders, paths: ['/o/*/']}", "'*' before its last segment"),
        ("{path: /o, to: orders, paths: ['/o/{a}/{a}']}", "repeats the placeholder"),
        ("{path: /o, to: orders, paths: ['/o/%41']}", "percent-encoding"),
        ("{path: /o, to: orders, paths: ['/o/a b']}", "has an invalid segment"),
        ("{path: /o, to: orders, paths: ['/o/{a}', '/o/{b}']}", "matches the very paths"),
        ("{path: /o, to: orders, paths: [/o, /o]}", "paths repeat an operation"),
        ("{path: /o, to: orders, paths: []}", "paths"),
    ],
)
def test_bad_routes_are_refused_naming_the_key(route: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(f"    - {route}\n"), source="t.yaml")
    text = " ".join(caught.value.problems)
    assert "t.yaml:" in text
    assert "gateway" in text
    assert message in text


def test_two_routes_for_one_host_prefix_and_method_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            _config(
                "    - {path: /o, to: orders, methods: [GET, POST]}\n"
                "    - {path: /o, to: payments, methods: [POST]}\n"
            ),
            source="t.yaml",
        )
    assert "repeats POST /o of routes[0]" in " ".join(caught.value.problems)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  internal_token_ttl: 1h\n", "is outside 5s .. 5m"),
        ("  trusted_proxies: [10.0.0.1/8]\n", "host bits set"),
        ("  tls_cert: c.pem\n", "tls_cert and tls_key go together"),
        ("  max_body_bytes: 0\n", "max_body_bytes"),
    ],
)
def test_bad_gateway_settings_are_refused(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config("    - {path: /o, to: orders}\n", extra), source="t.yaml")
    assert message in " ".join(caught.value.problems)


def test_outside_dev_mode_the_gateway_needs_a_certificate() -> None:
    text = _config("    - {path: /o, to: orders}\n").replace("dev: true\n", "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="t.yaml")
    assert "gateway.tls_cert" in " ".join(caught.value.problems)


def test_the_schema_describes_the_gateway() -> None:
    schema = config_json_schema()
    assert "gateway" in schema["properties"]


def test_each_route_implies_exactly_its_call_from_the_gateway() -> None:
    config = parse_config(
        _config(
            "    - {path: /orders, to: orders, methods: [GET, POST]}\n"
            "    - {path: /admin, to: payments, methods: [GET]}\n"
        ),
        source="t.yaml",
    )
    gateway = config.component_spiffe_id("gateway")
    orders = CallAuthorizer(config, "orders")
    assert orders.decide(gateway, "GET", "/orders").allowed
    assert orders.decide(gateway, "POST", "/orders/o_1/items").allowed
    assert not orders.decide(gateway, "GET", "/ordersX").allowed  # a prefix, not a string
    assert not orders.decide(gateway, "DELETE", "/orders/o_1").allowed
    assert not orders.decide(gateway, "GET", "/admin").allowed  # that route goes elsewhere
    # nobody else inherits the gateway's calls
    assert not orders.decide(config.spiffe_id("payments"), "GET", "/orders").allowed
    payments = CallAuthorizer(config, "payments")
    assert payments.decide(gateway, "GET", "/admin/x").allowed
    assert not payments.decide(gateway, "POST", "/admin/x").allowed


def test_a_route_names_only_known_issuers() -> None:
    issuers = '  issuers: [{issuer: "https://kc.example/realms/shop", audience: shop-api}]\n'
    fine = parse_config(
        _config(
            '    - {path: /orders, to: orders, issuers: [trustmesh, "https://kc.example/realms/shop"]}\n',
            issuers,
        ),
        source="t.yaml",
    )
    assert fine.gateway is not None
    assert fine.gateway.routes[0].issuers == ["trustmesh", "https://kc.example/realms/shop"]
    with pytest.raises(ConfigError, match=r"names 'https://other.example'.*expected 'trustmesh'"):
        parse_config(
            _config(
                '    - {path: /orders, to: orders, issuers: ["https://other.example"]}\n', issuers
            ),
            source="t.yaml",
        )


def test_a_route_lists_its_operations_and_implies_only_those_calls() -> None:
    config = parse_config(
        _config(
            "    - {path: /orders, to: orders, methods: [GET, POST], paths: [/orders,\n"
            "       'GET /orders/{id}', 'POST /orders/{id}/refund', '/orders/export/']}\n"
            "    - {path: /admin, to: payments}\n"
        ),
        source="t.yaml",
    )
    assert config.gateway is not None
    orders_route, admin_route = config.gateway.routes
    assert orders_route.operations() == (
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("GET", "/orders/{id}"),
        ("POST", "/orders/{id}/refund"),
        ("GET", "/orders/export/"),
        ("POST", "/orders/export/"),
    )
    assert admin_route.operations() == (("GET", "/admin"), ("GET", "/admin/*"))
    gateway = config.component_spiffe_id("gateway")
    orders = CallAuthorizer(config, "orders")
    assert orders.decide(gateway, "GET", "/orders/o_1").allowed
    assert orders.decide(gateway, "POST", "/orders/o_1/refund").allowed
    assert orders.decide(gateway, "GET", "/orders/export/").allowed  # declared with its slash
    for method, path in (
        ("POST", "/orders/o_1"),  # that operation is GET only
        ("GET", "/orders/o_1/refund"),
        ("POST", "/orders/o_1/refund/"),
        ("GET", "/orders/o_1/items"),  # not an operation of the route
    ):
        assert not orders.decide(gateway, method, path).allowed, (method, path)
