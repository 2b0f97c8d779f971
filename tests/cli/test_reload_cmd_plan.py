"""What ``trustmesh reload`` applies and what it refuses, decided from two declarations
alone (:mod:`trustmesh.config.reloadable`): each refusal names its key."""

from __future__ import annotations

import pytest

from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.config.reloadable import Plan, differences, plan

RUNNING = """trust_domain: plan.example
dev: true
services:
  orders: {run: "trustmesh.demo.orders:app"}
  payments: {run: "trustmesh.demo.payments:app"}
calls:
  - {from: orders, to: payments, allow: ["POST /charges"]}
gateway:
  rate_limits: [{per: ip, limit: 100/minute}]
  routes:
    - {path: /orders, to: orders, methods: [GET], auth: [anonymous]}
    - {path: /old, to: orders, methods: [GET], auth: [anonymous]}
secrets:
  policies:
    - {identity: payments, allow: {"secret/data/payments/*": [read]}}
"""


def declared(text: str) -> TrustmeshConfig:
    return parse_config(text, source="trustmesh.yaml")


def planned(change: str, replacement: str) -> Plan:
    assert change in RUNNING
    return plan(declared(RUNNING), declared(RUNNING.replace(change, replacement)))


def test_the_same_declaration_is_applied_by_each_declared_component() -> None:
    same = plan(declared(RUNNING), declared(RUNNING))
    assert same == Plan(gateway=True, secrets=True, refused=())  # its files may have changed
    bare = declared("trust_domain: plan.example\n")
    assert not plan(bare, bare).changes


@pytest.mark.parametrize(
    ("change", "replacement"),
    [
        ("100/minute", "5/minute"),  # a limit
        ("    - {path: /old, to: orders, methods: [GET], auth: [anonymous]}\n", ""),  # a route
        ("[read]}}\n", "[read, list]}}\n"),  # a secrets policy
        ("gateway:\n", "gateway:\n  policies: []\n"),
    ],
)
def test_routes_limits_and_policies_are_applied(change: str, replacement: str) -> None:
    assert planned(change, replacement).refused == ()


@pytest.mark.parametrize(
    ("change", "replacement", "refused"),
    [
        ("plan.example", "other.example", "trust_domain changed"),
        (
            "trust_domain: plan.example\n",
            "trust_domain: plan.example\nlisten: {drain: 30s}\n",
            "listen.drain changed",
        ),
        (
            '  payments: {run: "trustmesh.demo.payments:app"}\n',
            '  payments: {run: "trustmesh.demo.payments:app"}\n  stock: {run: "x:app"}\n',
            "services.stock added",
        ),
        ("gateway:\n", "gateway:\n  port: 8443\n", "gateway.port changed"),
        ("secrets:\n", "secrets:\n  port: 8200\n", "secrets.port changed"),
        (
            'secrets:\n  policies:\n    - {identity: payments, allow: {"secret/data/payments/*": [read]}}\n',
            "",
            "secrets removed",
        ),
    ],
)
def test_what_only_a_restart_applies_is_refused_by_name(
    change: str, replacement: str, refused: str
) -> None:
    problems = planned(change, replacement).refused
    assert any(p.startswith(refused) and "takes a restart" in p for p in problems), problems


def test_differences_name_the_deepest_key() -> None:
    running = declared(RUNNING)
    assert differences("x", running, running) == []
    assert differences("services", {"a": 1}, {"b": 1}) == ["services.a removed", "services.b added"]
    assert differences("gateway", running.gateway, None) == ["gateway removed"]


@pytest.mark.parametrize(
    ("change", "replacement", "services"),
    [
        ('["POST /charges"]', '["POST /charges", "GET /charges/{id}"]', ("payments",)),  # wider
        ('["POST /charges"]', '["GET /charges/{id}"]', ("payments",)),  # another
        ('calls:\n  - {from: orders, to: payments, allow: ["POST /charges"]}\n', "", ("payments",)),
        ("/old, to: orders", "/new, to: orders", ("orders",)),  # a route forwarded anew
        ("/old, to: orders", "/old, to: payments", ("orders", "payments")),  # moved
        ("100/minute", "5/minute", ()),  # what services accept is the same
    ],
)
def test_a_service_run_by_up_compiles_the_calls_it_accepts_again(
    change: str, replacement: str, services: tuple[str, ...]
) -> None:
    planned_ = planned(change, replacement)
    assert planned_.refused == ()
    assert planned_.services == services
    assert planned_.changes


def test_calls_to_a_service_up_does_not_run_from_an_app_take_a_restart() -> None:
    commanded = RUNNING.replace(
        '  payments: {run: "trustmesh.demo.payments:app"}',
        '  payments: {command: ["payments-server"]}',
    )
    wider = commanded.replace('["POST /charges"]', '["POST /charges", "GET /charges/{id}"]')
    (problem,) = plan(declared(commanded), declared(wider)).refused
    assert problem.startswith("calls to payments (calls, gateway.routes) changed")
    assert "takes a restart" in problem
