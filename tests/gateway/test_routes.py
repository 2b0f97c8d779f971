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


OPERATIONS = parse_config(
    """trust_domain: shop.example
dev: true
services:
  orders: {run: "a.b:app"}
  web: {run: "a.b:app"}
gateway:
  routes:
    - {path: /, to: web, auth: [anonymous]}
    - path: /orders
      to: orders
      methods: [GET, POST]
      paths: ["GET /orders", "POST /orders", "GET /orders/{id}", "/orders/export",
              "POST /orders/{id}/refund", "GET /orders/{id}/files/*", "GET /orders/feed/"]
""",
    source="t.yaml",
)
assert OPERATIONS.gateway is not None
OPS = RouteTable(OPERATIONS.gateway.routes)


@pytest.mark.parametrize(
    ("method", "path", "template", "params"),
    [
        ("GET", "/orders", "/orders", ()),
        ("GET", "/orders/o_1", "/orders/{id}", (("id", "o_1"),)),
        ("POST", "/orders/o 1/refund", "/orders/{id}/refund", (("id", "o 1"),)),
        ("GET", "/orders/export", "/orders/export", ()),  # a literal before a placeholder
        ("POST", "/orders/export", "/orders/export", ()),
        ("GET", "/orders/o_1/files/a/b", "/orders/{id}/files/*", (("id", "o_1"),)),
        ("GET", "/orders/feed/", "/orders/feed/", ()),  # declared with its slash
        ("GET", "/orders/feed", "/orders/{id}", (("id", "feed"),)),
        ("GET", "/", "/", ()),  # a route without paths: its prefix and everything under it
        ("GET", "/web/x", "/*", ()),
    ],
)
def test_a_path_is_one_operation_of_its_route(
    method: str, path: str, template: str, params: tuple[tuple[str, str], ...]
) -> None:
    decision = OPS.decide(None, path, method)
    assert decision.reason == Reason.ROUTE_MATCHED, decision
    assert (decision.template, decision.params) == (template, params)


@pytest.mark.parametrize(
    ("method", "path", "reason"),
    [
        ("POST", "/orders/o_1/refund/", Reason.PATH_NON_CANONICAL),  # the attack of issue 13
        ("GET", "/orders/", Reason.PATH_NON_CANONICAL),
        ("GET", "/orders/o_1/", Reason.PATH_NON_CANONICAL),
        ("GET", "/web/", Reason.PATH_NON_CANONICAL),  # routes without paths too
        ("POST", "/orders/o_1/REFUND", Reason.ROUTE_NOT_FOUND),  # another case, another path
        ("POST", "/orders/o_1/Refund", Reason.ROUTE_NOT_FOUND),
        ("GET", "/orders/o_1/refund/x", Reason.ROUTE_NOT_FOUND),
        ("GET", "/orders/o_1/files", Reason.ROUTE_NOT_FOUND),  # '*' is one segment or more
        ("GET", "/orders/o_1/files/", Reason.PATH_NON_CANONICAL),
        ("POST", "/orders/o_1", Reason.METHOD_NOT_ALLOWED),
        ("GET", "/orders/o_1/refund", Reason.METHOD_NOT_ALLOWED),
    ],
)
def test_any_other_path_under_the_route_is_refused(method: str, path: str, reason: str) -> None:
    decision = OPS.decide(None, path, method)
    assert decision.reason == reason
    assert decision.route is None


def test_a_method_the_operation_lacks_is_405_with_its_methods() -> None:
    assert OPS.decide(None, "/orders/o_1/refund", "GET").allowed_methods == ("POST",)
    assert OPS.decide(None, "/orders/o_1", "POST").allowed_methods == ("GET",)


templates = st.lists(st.sampled_from(["a", "b", "{p}", "*", ""]), min_size=0, max_size=3).map(
    lambda s: "/x/" + "/".join(s)
)


@given(st.lists(templates, min_size=1, max_size=4, unique=True), paths, st.booleans())
def test_a_route_with_paths_takes_only_paths_one_of_them_matches(
    declared: list[str], tail: str, slash: bool
) -> None:
    """Read directly: a template matches a path of as many segments (a final '*': at
    least as many, none of them empty) whose literals are equal and whose placeholders
    are not empty; a path none matches is never routed."""
    path = "/x" + (tail if tail != "/" else "") + ("/" if slash else "")
    try:
        route = GatewayRoute(path="/x", to="orders", paths=declared)
    except ValueError:
        return  # not a valid declaration (the config refuses it)
    decision = RouteTable([route]).decide(None, path, "GET")

    def matches(template: str) -> bool:
        want, got = template[1:].split("/"), path[1:].split("/")
        if want[-1] == "*":
            want = want[:-1]
            if len(got) <= len(want) or not all(got[len(want) :]):
                return False
            got = got[: len(want)]
        return len(want) == len(got) and all(
            (w.startswith("{") and g) or w == g for w, g in zip(want, got, strict=True)
        )

    matching = [t for t in declared if matches(t)]
    assert decision.found == bool(matching)
    if matching:
        assert decision.template in matching
    elif path.endswith("/"):
        assert decision.reason == Reason.PATH_NON_CANONICAL
