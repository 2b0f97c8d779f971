"""Cedar policies compiled from the declaration's calls, and the decisions they give."""

from __future__ import annotations

import pytest

from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.policy.calls import CallAuthorizer, compile_call_policies
from trustmesh.reasons import Reason

ORDERS = "spiffe://shop.example/orders"
PAYMENTS = "spiffe://shop.example/payments"
INVENTORY = "spiffe://shop.example/inventory"


@pytest.fixture(scope="module")
def config() -> TrustmeshConfig:
    return parse_config(
        """
trust_domain: shop.example
services:
  orders: {run: "shop.orders:app"}
  payments: {run: "shop.payments:app"}
  inventory: {run: "shop.inventory:app"}
calls:
  - {from: orders, to: payments, allow: ["POST /charges", "GET /charges/{id}"]}
  - {from: orders, to: inventory, allow: ["GET /items/{id}", "* /reservations/*"]}
  - {from: payments, to: inventory, allow: ["GET /items/{id}"]}
""",
        source="test.yaml",
    )


def test_one_policy_per_allow_item(config: TrustmeshConfig) -> None:
    text = compile_call_policies(config)
    assert text.count("permit (") == 5
    assert '@id("calls[0].allow[1]")' in text
    assert 'resource == Route::"payments GET /charges/{id}"' in text


@pytest.mark.parametrize(
    ("callee", "caller", "method", "path", "allowed"),
    [
        ("payments", ORDERS, "POST", "/charges", True),
        ("payments", ORDERS, "GET", "/charges/ch_1", True),
        ("payments", ORDERS, "GET", "/charges", False),  # method not declared for the path
        ("payments", ORDERS, "DELETE", "/charges/ch_1", False),
        ("payments", ORDERS, "GET", "/charges/ch_1/refunds", False),  # {id} is one segment
        ("payments", ORDERS, "GET", "/charges/", False),
        ("payments", INVENTORY, "POST", "/charges", False),  # caller not declared
        ("payments", PAYMENTS, "POST", "/charges", False),
        ("payments", "spiffe://evil.example/orders", "POST", "/charges", False),
        ("orders", PAYMENTS, "GET", "/orders/1", False),  # payments may not call orders
        ("inventory", ORDERS, "PUT", "/reservations/r1", True),  # '*' method
        ("inventory", ORDERS, "DELETE", "/reservations/r1/lines/2", True),  # '*' path tail
        ("inventory", ORDERS, "POST", "/reservations", False),  # '*' needs a segment
        ("inventory", PAYMENTS, "GET", "/items/i1", True),
        ("inventory", PAYMENTS, "PUT", "/reservations/r1", False),
    ],
)
def test_decisions(
    config: TrustmeshConfig, callee: str, caller: str, method: str, path: str, allowed: bool
) -> None:
    decision = CallAuthorizer(config, callee).decide(caller, method, path)
    assert decision.allowed is allowed
    assert decision.reason is (Reason.POLICY_ALLOW if allowed else Reason.POLICY_DENY)
    if allowed:
        assert decision.policies
        assert decision.policies[0].startswith("calls[")


def test_a_service_nobody_may_call_denies_everything(config: TrustmeshConfig) -> None:
    authorizer = CallAuthorizer(config, "orders")
    assert authorizer.routes == ()
    assert not authorizer.decide(PAYMENTS, "GET", "/").allowed


def test_no_calls_at_all_denies() -> None:
    bare = parse_config("trust_domain: x.example\nservices: {a: {run: 'x.a:app'}}\n", source="t")
    assert not CallAuthorizer(bare, "a").decide("spiffe://x.example/b", "GET", "/").allowed


def test_decisions_are_cached_per_route(config: TrustmeshConfig) -> None:
    authorizer = CallAuthorizer(config, "payments")
    for i in range(50):
        assert authorizer.decide(ORDERS, "GET", f"/charges/{i}").allowed
    info = authorizer._decide_route.cache_info()
    assert info.misses == 1
    assert info.hits == 49


def test_an_authorizer_not_enforcing_the_call_policy_allows_every_call(
    config: TrustmeshConfig,
) -> None:
    """The test switch ``call-policy``: what the enforced authorizer refuses, the
    unenforced one allows, and its decision says why."""
    enforced = CallAuthorizer(config, "orders")
    assert not enforced.decide(PAYMENTS, "GET", "/orders/1").allowed
    loose = CallAuthorizer(config, "orders", enforced=False)
    decision = loose.decide(PAYMENTS, "GET", "/orders/1")
    assert decision.allowed
    assert decision.policies == ("testing:call-policy-off",)
    assert loose.decide("spiffe://evil.example/x", "DELETE", "/anything").allowed
