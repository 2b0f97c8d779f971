"""Route selection: host, longest prefix on segment boundaries, method; property-tested
against a direct reading of the rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.config import parse_config
from trustmesh.config.gateway import GatewayRoute
from trustmesh.gateway.routes import RouteTable, request_host
from trustmesh.reasons import Reason

CONFIG = parse_config(
    """trust_domain: shop.example
dev: true
services:
  orders: {run: "a.b:app"}
  admin: {run: "a.b:app"}
  web: {run: "a.b:app"}
gateway:
  routes:
    - {path: /, to: web, auth: [anonymous]}
    - {path: /orders, to: orders, methods: [GET, POST]}
    - {path: /orders/admin, to: admin, methods: [GET]}
    - {path: /orders, to: admin, host: admin.shop.example, methods: [DELETE]}
""",
    source="t.yaml",
)
assert CONFIG.gateway is not None
TABLE = RouteTable(CONFIG.gateway.routes)


@pytest.mark.parametrize(
    ("host", "method", "path", "to"),
    [
        (None, "GET", "/", "web"),
        (None, "GET", "/ordersX", "web"),  # a prefix ends at a segment boundary
        (None, "GET", "/orders", "orders"),
        (None, "POST", "/orders/o_1/items", "orders"),
        (None, "GET", "/orders/admin", "admin"),  # the longest prefix wins
        (None, "GET", "/orders/admin/x", "admin"),
        (None, "GET", "/orders/adminx", "orders"),
        ("admin.shop.example", "DELETE", "/orders/o_1", "admin"),
    ],
)
def test_the_most_specific_route_is_taken(
    host: str | None, method: str, path: str, to: str
) -> None:
    decision = TABLE.decide(host, path, method)
    assert decision.route is not None, decision
    assert decision.route.to == to
    assert decision.reason == Reason.ROUTE_MATCHED


def test_a_wrong_method_is_405_with_the_allowed_ones() -> None:
    decision = TABLE.decide(None, "/orders/o_1", "DELETE")
    assert decision.reason == Reason.METHOD_NOT_ALLOWED
    assert decision.allowed_methods == ("GET", "POST")
    # the host-specific route overrides the host-less one for its host
    other = TABLE.decide("admin.shop.example", "/orders/o_1", "GET")
    assert other.reason == Reason.METHOD_NOT_ALLOWED
    assert other.allowed_methods == ("DELETE",)
    assert TABLE.decide(None, "/orders", "HEAD").reason == Reason.METHOD_NOT_ALLOWED


def test_no_route_is_404() -> None:
    table = RouteTable([GatewayRoute(path="/api", to="orders")])
    assert table.decide(None, "/", "GET").reason == Reason.ROUTE_NOT_FOUND
    assert table.decide(None, "/apix", "GET").reason == Reason.ROUTE_NOT_FOUND
    assert not table.decide(None, "/apix", "GET").found


@pytest.mark.parametrize(
    ("header", "host"),
    [
        (b"Shop.Example:8443", "shop.example"),
        (b"shop.example", "shop.example"),
        (b"[::1]:8443", "[::1]"),
        (b"", None),
        (None, None),
        (b"\xff", None),
    ],
)
def test_request_host(header: bytes | None, host: str | None) -> None:
    assert request_host(header) == host


segments = st.sampled_from(["a", "b", "ab", "orders", "x"])
prefixes = st.lists(segments, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
paths = st.lists(segments, min_size=0, max_size=4).map(lambda s: "/" + "/".join(s))


@given(st.lists(prefixes, min_size=1, max_size=6, unique=True), paths)
def test_the_rule_holds_for_any_table(route_prefixes: list[str], path: str) -> None:
    routes = [GatewayRoute(path=p, to="orders") for p in route_prefixes]
    decision = RouteTable(routes).decide(None, path, "GET")

    def under(prefix: str) -> bool:
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")

    matching = [p for p in route_prefixes if under(p)]
    if not matching:
        assert decision.reason == Reason.ROUTE_NOT_FOUND
    else:
        assert decision.route is not None
        assert decision.route.path == max(matching, key=len)
