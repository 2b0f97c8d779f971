"""The pods of a declaration, as ``trustmesh up`` would start them as processes
(``cli/stack.py``): the identity service, the identity provider, the audit collector,
the secrets service and the gateway when declared, and every service that is not
``external`` (an external service runs elsewhere: it gets no pod).

Pure: the declaration in, frozen values out. Each listener gets a fixed port: the
declared one, or this module's default where the declaration says 0 ("pick a free
one", which a Kubernetes Service cannot follow). The manifests pin every one of them in
the pod's environment (``TRUSTMESH_LISTEN_PORTS`` with the port's declaration key for a
component, ``TRUSTMESH_PORT`` for a service: :mod:`trustmesh.config.listen`), so the pod
listens where its Service sends whatever the declaration leaves to the system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from trustmesh.config import TrustmeshConfig
from trustmesh.errors import UsageError

__all__ = [
    "COMPONENT_ORDER",
    "DEFAULT_PORTS",
    "Port",
    "Workload",
    "workloads",
]

#: Components in the order ``trustmesh up`` starts them.
COMPONENT_ORDER: Final = ("identity", "audit", "auth", "secrets", "gateway")

#: Where a listener is put when the declaration leaves its port to the system (0).
DEFAULT_PORTS: Final = {
    ("identity", "discovery"): 8081,
    ("auth", "mtls"): 8443,
    ("auth", "public"): 8444,
    ("secrets", "mtls"): 8200,
    ("audit", "mtls"): 8600,
    ("audit", "console"): 8601,
    ("gateway", "public"): 8443,
    ("gateway", "internal"): 8444,
    ("service", "mtls"): 8443,
}


@dataclass(frozen=True)
class Port:
    """A listener: its name in the pod, its number, whether it takes connections from
    outside the namespace (browsers, API clients), and the declaration key of its port
    (pinned through ``TRUSTMESH_LISTEN_PORTS``; ``""`` for a service's, pinned through
    ``TRUSTMESH_PORT``)."""

    name: str
    number: int
    public: bool
    key: str


@dataclass(frozen=True)
class Workload:
    """One pod: a trustmesh component (``kind="component"``) or a declared service."""

    name: str
    kind: str
    ports: tuple[Port, ...]
    #: Keeps state that must outlive the pod (keys, logs, stores): a volume claim.
    stateful: bool

    @property
    def mtls(self) -> Port:
        """Where other pods call it (its mTLS listener)."""
        for port in self.ports:
            if port.name in ("mtls", "discovery", "internal"):
                return port
        raise LookupError(self.name)  # every workload has one (see workloads())


def _port(component: str, name: str, declared: int, key: str, public: bool) -> Port:
    return Port(name, declared or DEFAULT_PORTS[(component, name)], public, key)


def _component(name: str, *ports: Port) -> Workload:
    return Workload(name, "component", ports, stateful=True)


def _components(config: TrustmeshConfig) -> list[Workload]:
    """The components the declaration runs, in start order."""
    discovery = config.identity.discovery_port
    found = [
        _component(
            "identity", _port("identity", "discovery", discovery, "identity.discovery_port", False)
        )
    ]
    if (audit := config.audit) is not None:
        ports = [_port("audit", "mtls", audit.port, "audit.port", False)]
        if audit.console is not None:
            ports.append(_port("audit", "console", audit.console.port, "audit.console.port", True))
        found.append(_component("audit", *ports))
    auth = [_port("auth", "mtls", config.auth.port, "auth.port", False)]
    if config.auth_public_listener:
        auth.append(_port("auth", "public", config.auth.public_port, "auth.public_port", True))
    found.append(_component("auth", *auth))
    if config.secrets is not None:
        found.append(
            _component(
                "secrets", _port("secrets", "mtls", config.secrets.port, "secrets.port", False)
            )
        )
    if (gateway := config.gateway) is not None:
        public = _port("gateway", "public", gateway.port, "gateway.port", True)
        internal = _port(
            "gateway", "internal", gateway.internal_port, "gateway.internal_port", False
        )
        found.append(_component("gateway", public, internal))
    return found


def _services(config: TrustmeshConfig) -> list[Workload]:
    """Every service that runs in the namespace (not ``external``), by name."""
    found = []
    for name in sorted(config.services):
        spec = config.services[name]
        if not spec.external:
            port = Port("mtls", spec.port or DEFAULT_PORTS[("service", "mtls")], False, "")
            found.append(Workload(name, "service", (port,), stateful=False))
    return found


def workloads(config: TrustmeshConfig) -> tuple[Workload, ...]:
    """Every pod of the declaration: the components in start order, then the services by
    name (UsageError: two listeners of one pod on one port)."""
    found = (*_components(config), *_services(config))
    for pod in found:
        numbers = [port.number for port in pod.ports]
        if len(set(numbers)) != len(numbers):
            where = ", ".join(f"{p.key or p.name}: {p.number}" for p in pod.ports)
            raise UsageError(
                f"{pod.name}'s listeners would share a port ({where}); expected "
                "a distinct port for each"
            )
    return found
