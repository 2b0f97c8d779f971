"""The console's call graph (trustmesh.audit.console.graph): derived from the declaration,
laid out without hanging on a cycle, and the live decisions counted per hop — once per
request, the callee's word only, bounded in time and in pairs. Events are built by the
same Recorder, with the same fields, as the gateway and the SDK's middleware record."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from auditkit import login_failed
from consolerig import shop

from trustmesh import crypto, events
from trustmesh.audit.chain import CheckpointPolicy
from trustmesh.audit.console.graph import (
    _MAX_PAIRS,
    CLIENTS,
    UNIDENTIFIED,
    Edge,
    EdgeCounts,
    Graph,
    declared,
    layout,
)
from trustmesh.audit.console.server import edge_counts
from trustmesh.audit.detection import Detector
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.service import AuditService
from trustmesh.config import parse_config
from trustmesh.reasons import Reason
from trustmesh.store import create_engine, sqlite_url

CONFIG = shop()
GATEWAY = CONFIG.component_spiffe_id("gateway")
ORDERS, PAYMENTS, LEDGER = (CONFIG.spiffe_id(n) for n in ("orders", "payments", "ledger"))
MINUTE_MS = 60_000
T_MS = 29_000_000 * MINUTE_MS  # a whole minute, in 2025
ALLOW, DENY = events.Decision.ALLOW, events.Decision.DENY


def service_call(
    callee: str,
    caller: str | None,
    decision: events.Decision,
    *,
    time_ms: int = T_MS,
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """trustmesh.sdk.middleware.ZeroTrustMiddleware._emit: the callee's decision."""
    recorder = events.Recorder(events.MemorySink(), component="svc", spiffe_id=callee)
    if attributes is None:
        attributes = {"method": "POST", "path": "/charges", "route": None, "policy": None}
    event = recorder.record(
        Reason.POLICY_ALLOW if decision is ALLOW else Reason.POLICY_DENY,
        "call allowed" if decision is ALLOW else "call denied by policy",
        decision=decision,
        peer_spiffe_id=caller,
        attributes=attributes,
        now=_at(time_ms),
    ).to_ocsf()
    return _reported(event, callee)


def _reported(event: dict[str, Any], reporter: str) -> dict[str, Any]:
    """As the collector stamps a delivery: the workload that delivered it."""
    event["unmapped"]["trustmesh"]["reporter"] = reporter
    return event


def gateway_event(
    reason: Reason, decision: events.Decision, *, time_ms: int = T_MS
) -> dict[str, Any]:
    """trustmesh.gateway.app.GatewayApp._emit: each step of a request."""
    recorder = events.Recorder(events.MemorySink(), component="gateway", spiffe_id=GATEWAY)
    event = recorder.record(
        reason,
        reason.value,
        decision=decision,
        attributes={"method": "GET", "path": "/orders", "client": "203.0.113.7"},
        now=_at(time_ms),
    ).to_ocsf()
    return _reported(event, GATEWAY)


def _at(time_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(time_ms / 1000, dt.UTC)


def counts(now_ms: int = T_MS + 30_000) -> EdgeCounts:
    """Counts on the collector's clock (by default within the minute of T_MS)."""
    return EdgeCounts(declared(CONFIG), GATEWAY, clock=lambda: now_ms / 1000)


# --- the declared graph -----------------------------------------------------------------


def test_the_graph_is_what_the_declaration_allows() -> None:
    graph = declared(CONFIG)
    assert graph.nodes == (CLIENTS, "gateway", "orders", "payments", "ledger")
    assert graph.edges == (
        Edge(CLIENTS, "gateway", ("/orders", "/pay")),
        Edge("gateway", "orders", ("GET /orders", "POST /orders")),
        Edge("gateway", "payments", ("/pay/{id}",)),
        Edge("orders", "payments", ("POST /charges", "GET /charges/{id}")),
        Edge("payments", "ledger", ("POST /entries",)),
    )
    assert dict(graph.nodes_by_id) == {
        GATEWAY: "gateway",
        ORDERS: "orders",
        PAYMENTS: "payments",
        LEDGER: "ledger",
    }


def test_without_a_gateway_there_are_no_clients_and_no_gateway() -> None:
    config = parse_config(
        """trust_domain: shop.example
dev: true
services:
  orders: {run: "shop.orders:app"}
  payments: {run: "shop.payments:app"}
calls:
  - {from: orders, to: payments, allow: ["POST /charges"]}
""",
        source="t.yaml",
    )
    graph = declared(config)
    assert graph.nodes == ("orders", "payments")
    assert graph.edges == (Edge("orders", "payments", ("POST /charges",)),)


def test_layout_places_every_node_in_columns_by_call_depth() -> None:
    placed = layout(declared(CONFIG))
    assert set(placed) == set(declared(CONFIG).nodes)
    columns = {name: p.x for name, p in placed.items()}
    assert columns[CLIENTS] < columns["gateway"] < columns["orders"]
    assert columns["orders"] < columns["payments"] < columns["ledger"]  # the longest path
    assert len({(p.x, p.y) for p in placed.values()}) == len(placed)


def test_layout_terminates_on_a_cycle_and_places_every_node() -> None:
    config = parse_config(
        """trust_domain: shop.example
dev: true
services:
  a: {run: "a:app"}
  b: {run: "b:app"}
  c: {run: "c:app"}
  lone: {run: "lone:app"}
calls:
  - {from: a, to: b, allow: ["GET /x"]}
  - {from: b, to: c, allow: ["GET /x"]}
  - {from: c, to: b, allow: ["GET /x"]}
""",
        source="t.yaml",
    )
    placed = layout(declared(config))
    assert set(placed) == {"a", "b", "c", "lone"}
    assert placed["a"].x < placed["b"].x
    assert placed["a"].x < placed["c"].x
    assert len({(p.x, p.y) for p in placed.values()}) == 4


def test_layout_terminates_when_every_node_is_in_a_cycle() -> None:
    """No node without callers (Kahn's order starts nowhere), a self-call, and an edge
    to a node the graph does not have."""
    graph = Graph(
        ("x", "y", "z"),
        (Edge("x", "y", ()), Edge("y", "z", ()), Edge("z", "x", ()), Edge("y", "y", ())),
    )
    graph = Graph(graph.nodes, (*graph.edges, Edge("z", "ghost", ())))
    placed = layout(graph)
    assert set(placed) == {"x", "y", "z"}
    assert len({(p.x, p.y) for p in placed.values()}) == 3


# --- the decisions on each edge ---------------------------------------------------------


def test_a_services_allow_counts_once_on_caller_to_callee() -> None:
    edges = counts()
    edges.observe(service_call(PAYMENTS, ORDERS, ALLOW))
    assert edges.recent(T_MS) == {"orders->payments": (1, 0)}
    assert edges.total == {("orders", "payments"): [1, 0]}


def test_a_services_deny_counts_as_denied_on_its_edge() -> None:
    edges = counts()
    edges.observe(service_call(PAYMENTS, ORDERS, DENY))
    edges.observe(service_call(PAYMENTS, ORDERS, ALLOW))
    assert edges.recent(T_MS) == {"orders->payments": (1, 1)}


def test_a_refusal_on_an_undeclared_edge_is_counted_as_an_attempt() -> None:
    edges = counts()
    edges.observe(service_call(ORDERS, LEDGER, DENY))
    assert edges.recent(T_MS) == {"ledger->orders": (0, 1)}


@pytest.mark.parametrize("peer", [None, "spiffe://evil.example/mallory", ""])
def test_a_deny_of_a_caller_without_a_known_svid_counts_on_unidentified(
    peer: str | None,
) -> None:
    edges = counts()
    event = service_call(PAYMENTS, peer or None, DENY)
    if peer is not None:  # as a delivery may carry it, past the Recorder's checks
        event["unmapped"]["trustmesh"]["peer_spiffe_id"] = peer
    edges.observe(event)
    assert edges.recent(T_MS) == {f"{UNIDENTIFIED}->payments": (0, 1)}


def test_a_services_event_that_is_not_a_requests_decision_is_not_counted() -> None:
    edges = counts()
    edges.observe(service_call(PAYMENTS, ORDERS, ALLOW, attributes={"path": "/charges"}))
    edges.observe(service_call(PAYMENTS, ORDERS, ALLOW, attributes={}))
    error = service_call(PAYMENTS, ORDERS, ALLOW)
    error["unmapped"]["trustmesh"]["decision"] = "error"
    edges.observe(error)
    assert edges.recent(T_MS) == {}
    assert edges.total == {}


def test_the_gateway_counts_its_policy_allow_and_its_denies_only() -> None:
    """One count per request: the forwarded step of an allowed request is not another."""
    edges = counts()
    edges.observe(gateway_event(Reason.POLICY_ALLOW, ALLOW))
    edges.observe(gateway_event(Reason.REQUEST_FORWARDED, ALLOW))
    edges.observe(gateway_event(Reason.TOKEN_EXPIRED, DENY))
    edges.observe(gateway_event(Reason.POLICY_DENY, DENY))
    assert edges.recent(T_MS) == {f"{CLIENTS}->gateway": (1, 2)}


@pytest.mark.parametrize(
    "callee", ["spiffe://shop.example/stranger", "spiffe://evil.example/orders", ""]
)
def test_an_event_of_a_callee_not_in_the_graph_is_ignored(callee: str) -> None:
    edges = counts()
    event = service_call(PAYMENTS, ORDERS, DENY)
    event["unmapped"]["trustmesh"]["spiffe_id"] = callee
    edges.observe(event)
    assert edges.recent(T_MS) == {}
    assert edges.total == {}


@pytest.mark.parametrize(
    "unmapped", [{}, {"trustmesh": None}, {"trustmesh": "x"}, {"trustmesh": []}]
)
def test_an_event_without_the_trustmesh_fields_is_ignored(unmapped: dict[str, Any]) -> None:
    edges = counts()
    event = service_call(PAYMENTS, ORDERS, DENY)
    event["unmapped"] = unmapped
    edges.observe(event)
    assert edges.total == {}


def test_recent_counts_only_the_minutes_asked_for() -> None:
    edges = counts(T_MS + 10 * MINUTE_MS + 30_000)
    edges.observe(service_call(PAYMENTS, ORDERS, ALLOW, time_ms=T_MS))
    edges.observe(service_call(PAYMENTS, ORDERS, DENY, time_ms=T_MS + 10 * MINUTE_MS))
    now = T_MS + 10 * MINUTE_MS + 30_000
    assert edges.recent(now, minutes=5) == {"orders->payments": (0, 1)}
    assert edges.recent(now, minutes=10) == {"orders->payments": (0, 1)}
    assert edges.recent(now, minutes=11) == {"orders->payments": (1, 1)}
    assert edges.recent(now) == {"orders->payments": (1, 1)}  # 15 minutes by default
    assert edges.recent(now + 20 * MINUTE_MS) == {}


def test_an_event_older_than_the_kept_minutes_goes_to_the_totals_only() -> None:
    edges = counts()
    edges.observe(service_call(PAYMENTS, ORDERS, ALLOW, time_ms=T_MS))
    edges.observe(service_call(PAYMENTS, ORDERS, DENY, time_ms=T_MS - 5 * MINUTE_MS))
    assert edges.recent(T_MS, minutes=60) == {"orders->payments": (1, 0)}
    assert edges.total == {("orders", "payments"): [1, 1]}


def test_an_hour_of_minutes_is_kept() -> None:
    edges = counts(T_MS + 60 * MINUTE_MS)
    for minute in range(61):
        edges.observe(service_call(PAYMENTS, ORDERS, ALLOW, time_ms=T_MS + minute * MINUTE_MS))
    assert len(edges._minutes) == 60
    assert edges.recent(T_MS + 60 * MINUTE_MS, minutes=1000) == {"orders->payments": (60, 0)}
    assert edges.total == {("orders", "payments"): [61, 0]}


def test_the_pairs_counted_are_bounded() -> None:
    """Any caller may be named (a deny of an unknown one is counted): the table of pairs
    is bounded, and a pair already counted still counts."""
    ids = {f"spiffe://big.example/s{i}": f"s{i}" for i in range(40)}
    edges = EdgeCounts(Graph(tuple(ids.values()), (), ids), None)
    first = ("spiffe://big.example/s1", "spiffe://big.example/s0")
    edges.observe(service_call(first[1], first[0], DENY))
    for callee in ids:
        for caller in ids:
            edges.observe(service_call(callee, caller, DENY))
    assert len(edges.total) == _MAX_PAIRS
    assert len(edges.recent(T_MS)) == _MAX_PAIRS
    assert edges.total[("s1", "s0")] == [0, 2]


# --- the counts as the collector feeds them ---------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AuditService]:
    ledger = Ledger(create_engine(sqlite_url(tmp_path / "audit.db")))
    await ledger.create()
    try:
        yield AuditService(
            ledger,
            crypto.generate_signing_key(),
            Detector.shipped(),
            CheckpointPolicy(records=10_000),
            clock=lambda: T_MS / 1000,
        )
    finally:
        await ledger.close()


async def test_the_collector_feeds_every_stored_event_to_the_counts_once(
    service: AuditService,
) -> None:
    edges = edge_counts(CONFIG, service)
    call = service_call(PAYMENTS, ORDERS, DENY)
    await service.ingest([call], PAYMENTS)
    await service.ingest([gateway_event(Reason.POLICY_ALLOW, ALLOW)], GATEWAY)
    # the gateway's word delivered by another workload is not the gateway's
    await service.ingest([gateway_event(Reason.POLICY_ALLOW, ALLOW)], PAYMENTS)
    retried = await service.ingest([copy.deepcopy(call)], PAYMENTS)
    assert retried.answer()["duplicates"] == 1  # a retried delivery is not counted again
    assert edges.recent(T_MS) == {"orders->payments": (0, 1), f"{CLIENTS}->gateway": (1, 0)}


async def test_an_event_with_an_odd_unmapped_neither_breaks_ingest_nor_hides_the_rest(
    service: AuditService,
) -> None:
    edges = edge_counts(CONFIG, service)
    poison = service_call(PAYMENTS, ORDERS, ALLOW)
    poison["unmapped"] = ["not", "an", "object"]
    burst = [login_failed("alice", i) for i in range(12)]  # the shipped rule fires on these
    ingested = await service.ingest(
        [poison, service_call(PAYMENTS, ORDERS, DENY), *burst], PAYMENTS
    )
    assert ingested.answer()["stored"] == 14
    assert ingested.alerts  # detection saw the burst after the odd event
    assert edges.recent(T_MS) == {"orders->payments": (0, 1)}


def test_events_stamped_in_the_future_do_not_hide_the_present() -> None:
    edges = counts()
    for minute in range(1000, 1060):  # a workload whose events claim the next day
        edges.observe(service_call(ORDERS, LEDGER, DENY, time_ms=T_MS + minute * MINUTE_MS))
    edges.observe(service_call(PAYMENTS, ORDERS, DENY, time_ms=T_MS))
    assert edges.recent(T_MS).get("orders->payments") == (0, 1)


def test_only_the_callee_s_own_delivery_counts() -> None:
    """Any workload may deliver events; an edge counts only what its callee delivered."""
    edges = counts()
    forged = _reported(service_call(PAYMENTS, ORDERS, DENY), ORDERS)  # orders speaks for payments
    edges.observe(forged)
    unstamped = service_call(PAYMENTS, ORDERS, DENY)
    del unstamped["unmapped"]["trustmesh"]["reporter"]
    edges.observe(unstamped)
    assert edges.recent(T_MS) == {}
    edges.observe(service_call(PAYMENTS, ORDERS, DENY))
    assert edges.recent(T_MS) == {"orders->payments": (0, 1)}
