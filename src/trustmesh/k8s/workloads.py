"""The pods of a declaration, as ``trustmesh up`` would start them as processes
(``cli/stack.py``): the identity service, the identity provider, the audit collector,
the secrets service and the gateway when declared, and every service that is not
``external`` (an external service runs elsewhere: it gets no pod).

Pure: the declaration in, frozen values out. Each listener gets a fixed port: the
declared one, or this module's default where the declaration says 0 ("pick a free
one", which a Kubernetes Service cannot follow). :func:`unpinned_ports` lists those, so
the command can say which declaration keys to set to the same numbers.
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
    "unpinned_ports",
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
    outside the namespace (browsers, API clients), and the declaration key that sets it
    (``None``: not settable yet; ``""``: set through the environment)."""

    name: str
    number: int
    public: bool
    key: str | None
    declared: bool


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


def _port(component: str, name: str, declared: int, key: str | None, public: bool) -> Port:
    default = DEFAULT_PORTS[(component, name)]
    return Port(name, declared or default, public, key, declared != 0)


def workloads(config: TrustmeshConfig) -> tuple[Workload, ...]:
    """Every pod of the declaration: the components in start order, then the services by
    name."""
    found = [
        Workload(
            "identity",
            "component",
            (
                _port(
                    "identity",
                    "discovery",
                    config.identity.discovery_port,
                    "identity.discovery_port",
                    False,
                ),
            ),
            stateful=True,
        )
    ]
    if config.audit is not None:
        ports = [_port("audit", "mtls", config.audit.port, "audit.port", False)]
        if config.audit.console is not None:
            ports.append(
                _port("audit", "console", config.audit.console.port, "audit.console.port", True)
            )
        found.append(Workload("audit", "component", tuple(ports), stateful=True))
    auth = [_port("auth", "mtls", config.auth.port, "auth.port", False)]
    if config.auth_public_listener:
        auth.append(_port("auth", "public", config.auth.public_port, "auth.public_port", True))
    found.append(Workload("auth", "component", tuple(auth), stateful=True))
    if config.secrets is not None:
        found.append(
            Workload(
                "secrets",
                "component",
                (_port("secrets", "mtls", config.secrets.port, "secrets.port", False),),
                stateful=True,
            )
        )
    if config.gateway is not None:
        found.append(
            Workload(
                "gateway",
                "component",
                (
                    _port("gateway", "public", config.gateway.port, "gateway.port", True),
                    _port("gateway", "internal", 0, None, False),
                ),
                stateful=True,
            )
        )
    for name in sorted(config.services):
        spec = config.services[name]
        if spec.external:
            continue
        # a service's port comes from TRUSTMESH_PORT (sdk.runtime), which the pod sets
        port = Port("mtls", spec.port or DEFAULT_PORTS[("service", "mtls")], False, "", True)
        found.append(Workload(name, "service", (port,), stateful=False))
    for pod in found:
        numbers = [port.number for port in pod.ports]
        if len(set(numbers)) != len(numbers):
            where = ", ".join(f"{p.key or p.name}: {p.number}" for p in pod.ports)
            raise UsageError(
                f"{pod.name}'s listeners would share a port ({where}); expected "
                "a distinct port for each"
            )
    return tuple(found)


def unpinned_ports(pods: tuple[Workload, ...]) -> list[tuple[Workload, Port]]:
    """The listeners whose port the manifests chose (the declaration leaves it to the
    system, or has no key for it): to be set to the same number in the declaration
    (``port.key``), where it can be, so that the component listens where its Service
    sends."""
    return [(pod, port) for pod in pods for port in pod.ports if not port.declared]
