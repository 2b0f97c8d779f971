"""The NetworkPolicies allow exactly the connections the declaration implies.

The expected set is worked out here from the declaration's YAML itself (not through the
renderer's models or graph), and the rendered policies are read back the way a cluster
reads them: a connection from pod A to pod B on port P is allowed only when a policy
selecting A lets it out to B on P *and* a policy selecting B lets it in from A on P."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k8srig import MINIMAL, PRODUCTION, documents, of_kind, render, shop, write

#: The ports the renderer gives a listener the declaration leaves at 0 (documented in
#: trustmesh.k8s.workloads).
DEFAULTS = {"identity": 8081, "auth": 8443, "secrets": 8200, "audit": 8600, "service": 8443}
GATEWAY_INTERNAL = 8444

Pair = tuple[str, str, int]


def expected_pairs(declaration: dict[str, Any]) -> set[Pair]:
    """Who may connect to whom, from the declaration's text: every pod to the identity
    service and to the collector; services, the gateway, the identity service and the
    collector to the provider; secrets readers to the secrets service; the gateway to its routes' services;
    services, the provider and the collector to the gateway's internal listener; each
    declared call between pods."""
    services = {
        name: spec
        for name, spec in (declaration.get("services") or {}).items()
        if not spec.get("external")
    }
    pods: dict[str, int] = {
        "identity": (declaration.get("identity") or {}).get("discovery_port") or 8081,
        "auth": (declaration.get("auth") or {}).get("port") or DEFAULTS["auth"],
    }
    audit, secrets, gateway = (declaration.get(k) for k in ("audit", "secrets", "gateway"))
    if audit is not None:
        pods["audit"] = audit.get("port") or DEFAULTS["audit"]
    if secrets is not None:
        pods["secrets"] = secrets.get("port") or DEFAULTS["secrets"]
    if gateway is not None:
        pods["gateway"] = gateway.get("internal_port") or GATEWAY_INTERNAL
    for name, spec in services.items():
        pods[name] = spec.get("port") or DEFAULTS["service"]

    pairs: set[Pair] = set()

    def may(source: str, target: str) -> None:
        if source in pods and target in pods and source != target:
            pairs.add((source, target, pods[target]))

    for name in pods:
        may(name, "identity")
        may(name, "audit")
    for name in [*services, "gateway", "audit", "identity"]:
        may(name, "auth")
    trust_domain = declaration["trust_domain"]
    for policy in (secrets or {}).get("policies", []):
        who = policy["identity"].removeprefix(f"spiffe://{trust_domain}/")
        if who in services:
            may(who, "secrets")
    if gateway is not None:
        for route in gateway.get("routes", []):
            may("gateway", route["to"])
        for name in [*services, "auth", "audit"]:
            may(name, "gateway")
    for call in declaration.get("calls", []):
        may(call["from"], call["to"])
    return pairs


def _name(selector: dict[str, Any]) -> str:
    return str(selector["matchLabels"]["app.kubernetes.io/name"])


def allowed_pairs(policies: list[dict[str, Any]]) -> tuple[set[Pair], set[Pair]]:
    """(egress, ingress): every (from, to, port) the policies let out of a pod, and in."""
    egress: set[Pair] = set()
    ingress: set[Pair] = set()
    for policy in policies:
        spec = policy["spec"]
        if not spec["podSelector"]:
            continue  # the default deny
        pod = _name(spec["podSelector"])
        for rule in spec.get("egress", []):
            for peer in rule["to"]:
                if "namespaceSelector" in peer:
                    continue  # DNS, checked on its own
                for port in rule["ports"]:
                    egress.add((pod, _name(peer["podSelector"]), port["port"]))
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                for port in rule["ports"]:
                    ingress.add((_name(peer["podSelector"]), pod, port["port"]))
    return egress, ingress


def _declarations(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "shop").mkdir()
    (tmp_path / "prod").mkdir()
    (tmp_path / "min").mkdir()
    return {
        "shop": shop(tmp_path / "shop"),
        "prod": write(tmp_path / "prod", PRODUCTION, db_password="p", redis_password="r"),
        "min": write(tmp_path / "min", MINIMAL),
    }


@pytest.mark.parametrize("which", ["shop", "prod", "min"])
def test_allowed_pod_pairs_equal_the_declared_graph(tmp_path: Path, which: str) -> None:
    config = _declarations(tmp_path)[which]
    out = tmp_path / "out"
    render(config, out)
    egress, ingress = allowed_pairs(of_kind(documents(out), "NetworkPolicy"))
    expected = expected_pairs(yaml.safe_load(config.read_text()))
    assert expected  # every declaration has at least its pods' calls to identity
    assert egress == expected
    assert ingress == expected


def test_the_shop_graph_is_what_its_declaration_says(tmp_path: Path) -> None:
    """Spelled out once for the demo, so that a rule that drifts in both the renderer and
    the test's reading of it is still seen."""
    out = tmp_path / "out"
    render(shop(tmp_path), out)
    egress, _ = allowed_pairs(of_kind(documents(out), "NetworkPolicy"))
    calls = {(a, b) for a, b, _ in egress if b not in ("identity", "audit")}
    assert calls == {
        ("gateway", "auth"),
        ("identity", "auth"),  # its admin API checks an admin's token
        ("gateway", "inventory"),
        ("gateway", "orders"),
        ("audit", "auth"),  # the console's sign-in, the responses that unlock users
        ("audit", "gateway"),  # the responses that block an address
        ("auth", "gateway"),  # the gateway's keys, for token exchange
        *((s, "auth") for s in ("inventory", "orders", "payments")),
        *((s, "gateway") for s in ("inventory", "orders", "payments")),
        ("payments", "secrets"),
        ("orders", "inventory"),
        ("orders", "payments"),
    }
    assert ("payments", "orders") not in {(a, b) for a, b, _ in egress}
    assert not any("storefront" in pair for pair in egress)  # external: no pod


def test_a_call_removed_from_the_declaration_is_no_longer_allowed(tmp_path: Path) -> None:
    config = shop(tmp_path)
    text = config.read_text()
    line = (
        '  - {from: orders, to: payments,  allow: ["POST /charges", "GET /charges/{charge_id}"]}\n'
    )
    assert line in text
    config.write_text(text.replace(line, ""))
    out = tmp_path / "out"
    render(config, out)
    egress, ingress = allowed_pairs(of_kind(documents(out), "NetworkPolicy"))
    assert ("orders", "payments", 8443) not in egress | ingress
    assert ("orders", "inventory", 8443) in egress & ingress


def test_every_pod_is_denied_by_default_and_may_ask_dns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(shop(tmp_path), out)
    docs = documents(out)
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    assert deny[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    selected = {_name(p["spec"]["podSelector"]) for p in policies if p["spec"]["podSelector"]}
    assert selected == pods
    for policy in policies:
        spec = policy["spec"]
        if not spec["podSelector"]:
            continue
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        dns = [r for r in spec["egress"] if any("namespaceSelector" in p for p in r["to"])]
        assert dns == [
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }
        ]


def test_only_listeners_for_browsers_take_connections_from_anywhere(tmp_path: Path) -> None:
    """The gateway's public port, the provider's public listener and the console; no
    mTLS listener between pods is open to the world."""
    out = tmp_path / "out"
    render(shop(tmp_path), out)
    open_to_all: set[tuple[str, int]] = set()
    for policy in of_kind(documents(out), "NetworkPolicy"):
        spec = policy["spec"]
        for rule in spec.get("ingress", []):
            if "from" not in rule:
                for port in rule["ports"]:
                    open_to_all.add((_name(spec["podSelector"]), port["port"]))
    assert open_to_all == {("gateway", 8443), ("auth", 8444), ("audit", 8601)}
