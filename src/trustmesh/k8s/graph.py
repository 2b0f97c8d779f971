"""Who may open a connection to whom inside the namespace, derived from the declaration
and nothing else — the NetworkPolicies allow exactly these and deny the rest.

Each edge is ``(from pod, to pod, port)``:

- every pod → the identity service's discovery listener (discovery, suspensions);
- every pod but the collector → the audit collector (each delivers its events there),
  when ``audit`` is declared;
- every service, the gateway, the identity service (its admin API checks an admin's
  token) and the collector (its console's sign-in; its automated responses, which unlock
  users) → the identity provider (tokens, JWKS, introspection,
  token exchange);
- every service that a ``secrets.policies`` entry names → the secrets service;
- the gateway → each service a gateway route sends to;
- every service and the identity provider → the gateway's internal listener (its JWKS:
  services trust the tokens it signs, as ``trustmesh up`` tells each of them with
  ``TRUSTMESH_GATEWAY_URL``; the provider takes them as subject tokens of an exchange);
- the collector → the gateway's internal listener (its admin API: the responses that
  block an address);
- each declared call ``from → to`` where both run in the namespace.

Not edges: listeners for browsers and API clients (the gateway's, the provider's public
one, the console), which take connections from anywhere; DNS, which every pod may ask.
An ``external`` service has no pod: its calls come from outside and are not allowed
here (route them through the gateway).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustmesh.config import TrustmeshConfig
from trustmesh.k8s.workloads import Workload

__all__ = ["Edge", "edges"]


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    target: str
    port: int


def _secret_readers(config: TrustmeshConfig, pods: dict[str, Workload]) -> set[str]:
    if config.secrets is None:
        return set()
    readers = set()
    for policy in config.secrets.policies:
        spiffe_id = config.secrets_identity(policy.identity)
        for name, pod in pods.items():
            if pod.kind == "service" and spiffe_id == config.spiffe_id(name):
                readers.add(name)
    return readers


def edges(config: TrustmeshConfig, workloads: tuple[Workload, ...]) -> frozenset[Edge]:
    """Every allowed ``(from, to, port)`` between the pods of ``workloads``."""
    pods = {pod.name: pod for pod in workloads}
    services = [name for name, pod in pods.items() if pod.kind == "service"]
    found: set[Edge] = set()

    def allow(source: str, target: str) -> None:
        if source in pods and target in pods and source != target:
            found.add(Edge(source, target, pods[target].mtls.number))

    for name in pods:
        allow(name, "identity")
        allow(name, "audit")
    for name in [*services, "gateway"]:
        allow(name, "auth")
    allow("audit", "auth")
    allow("identity", "auth")
    for name in _secret_readers(config, pods):
        allow(name, "secrets")
    if config.gateway is not None:
        for route in config.gateway.routes:
            allow("gateway", route.to)
        for name in [*services, "auth", "audit"]:
            allow(name, "gateway")
    for call in config.calls:
        allow(call.from_, call.to)
    return frozenset(found)
