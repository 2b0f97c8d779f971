"""What a reload may apply to a running stack, and what it must refuse: pure, two
declarations in (the running one, the changed one), a :class:`Plan` out (``trustmesh
reload`` checks it before it asks a component; the gateway checks :func:`restart_only`
again before it swaps its pipeline).

Applied while the stack serves, each component swapping a compiled snapshot in at once:

- the gateway: everything of ``gateway:`` — routes, edge policies, contracts, filters,
  control modes, rate limits — but what only its restart applies
  (:func:`restart_only`: its listeners, store, issuers, upstream
  settings, a part it did not start);
- each service ``up`` runs from an ASGI app (``run:``): the calls it accepts — the
  ``calls`` to it and the gateway's routes to it — compiled again in the service
  (:attr:`Plan.services`); a service that is a ``command:`` or ``external`` takes a
  restart for that;
- the secrets service: its policies and token lifetimes (:data:`SECRETS_RELOADED`).

Each declared one applies it, changed or not: the files the gateway's section names
(Cedar policies, OpenAPI documents) may have changed while the declaration did not.

Anything else that differs takes a restart (``trustmesh down``, then ``up``), each named
by its key path: the trust domain, dev mode, ``listen`` (where, and how long a stop
drains), the services themselves (added, removed, how they run), the identity, provider, collector and detection settings, and a
gateway or secrets service declared or removed. A plan with a refusal is applied nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pydantic import BaseModel

from trustmesh.config.gateway import GatewayConfig
from trustmesh.config.secrets import SecretsConfig

if TYPE_CHECKING:
    from trustmesh.config.models import TrustmeshConfig

__all__ = ["RESTART_ONLY", "SECRETS_RELOADED", "Plan", "differences", "plan", "restart_only"]

#: The ``gateway:`` keys only a restart applies.
RESTART_ONLY: Final = (
    "engine",
    "nginx",
    "ext_authz",
    "port",
    "internal_port",
    "tls_cert",
    "tls_key",
    "limits",
    "metrics_port",
    "redis",
    "issuers",
    "upstream",
    "workers",  # the processes `up` starts
)

#: The ``secrets:`` keys the secrets service applies on a reload.
SECRETS_RELOADED: Final = ("policies", "token_ttl", "token_max_ttl")
#: The sections a reload applies (each checked on its own terms).
_APPLIED: Final = ("gateway", "secrets", "calls")
_RESTART: Final = "it takes a restart (trustmesh down, then trustmesh up)"


@dataclass(frozen=True)
class Plan:
    """Whether the gateway and the secrets service each apply the declaration, the
    services whose accepted calls change (each compiles them again), and what is refused
    (each problem names its key; any refusal: nothing is applied)."""

    gateway: bool = False
    secrets: bool = False
    services: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return self.gateway or self.secrets or bool(self.services)


def plan(running: TrustmeshConfig, new: TrustmeshConfig) -> Plan:
    """What applying ``new`` over ``running`` does (see the module docstring)."""
    refused = [
        f"{change}: {_RESTART}"
        for key in type(running).model_fields
        if key not in _APPLIED
        for change in differences(key, getattr(running, key), getattr(new, key))
    ]
    services, unapplied = _callees(running, new)
    refused += _gateway(running, new) + unapplied + _secrets(running.secrets, new.secrets)
    # applied whenever declared: a policy or OpenAPI file it names may have changed
    return Plan(
        gateway=new.gateway is not None,
        secrets=new.secrets is not None,
        services=services,
        refused=tuple(refused),
    )


def _callees(running: TrustmeshConfig, new: TrustmeshConfig) -> tuple[tuple[str, ...], list[str]]:
    """The services (in both declarations) whose accepted calls change — the ``calls``
    to them, the gateway's routes to them — and the refusals: a service ``up`` runs
    (``run:``) compiles them again on a reload; one it does not (``command:``,
    ``external``) takes a restart."""
    changed = sorted(
        name
        for name in set(running.services) & set(new.services)
        if _accepted(running, name) != _accepted(new, name)
    )
    reloaded = tuple(n for n in changed if new.services[n].run is not None)
    refused = [
        f"calls to {name} (calls, gateway.routes) changed: {name} is not run by trustmesh up "
        f"from an ASGI app (run:), so it applies them only once restarted: {_RESTART}"
        for name in changed
        if name not in reloaded
    ]
    return reloaded, refused


def _accepted(config: TrustmeshConfig, service: str) -> tuple[object, ...]:
    """What ``service`` compiles its call policies from (:mod:`trustmesh.policy.calls`):
    the ``calls`` to it and the gateway's routes to it."""
    calls = sorted((c.from_, tuple(c.allow)) for c in config.calls if c.to == service)
    routes = {f for f in _forwarded(config.gateway) if f[0] == service} if config.gateway else set()
    return tuple(calls), frozenset(routes)


def differences(key: str, old: object, new: object) -> list[str]:
    """Where ``old`` and ``new`` differ, as deep as a section or a mapping goes: ``key``
    and the path below it (``services.orders added``, ``listen.drain changed``)."""
    if old == new:
        return []
    if isinstance(old, BaseModel) and type(old) is type(new):
        return [
            change
            for name in type(old).model_fields
            for change in differences(f"{key}.{name}", getattr(old, name), getattr(new, name))
        ]
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return _mapping_differences(key, old, new)
    if old is None or new is None:
        return [f"{key} {'added' if old is None else 'removed'}"]
    return [f"{key} changed"]


def _mapping_differences(
    key: str, old: Mapping[str, object], new: Mapping[str, object]
) -> list[str]:
    found = [f"{key}.{name} removed" for name in old if name not in new]
    found += [f"{key}.{name} added" for name in new if name not in old]
    return found + [
        change
        for name in old
        if name in new
        for change in differences(f"{key}.{name}", old[name], new[name])
    ]


def _gateway(running: TrustmeshConfig, new: TrustmeshConfig) -> list[str]:
    if running.gateway is None or new.gateway is None:
        return [
            f"{change}: {_RESTART}"
            for change in differences("gateway", running.gateway, new.gateway)
        ]
    return [f"{problem}: {_RESTART}" for problem in restart_only(running.gateway, new.gateway)]


def _forwarded(gateway: GatewayConfig) -> set[tuple[str, str, str]]:
    """(service, method, path template) of each call the gateway's routes make: each
    service compiles the ones it accepts at its start (:mod:`trustmesh.policy.calls`)."""
    return {(r.to, method, pattern) for r in gateway.routes for method, pattern in r.operations()}


def _secrets(running: SecretsConfig | None, new: SecretsConfig | None) -> list[str]:
    if running is None or new is None:
        return [f"{change}: {_RESTART}" for change in differences("secrets", running, new)]
    return [
        f"{change}: {_RESTART}"
        for name in type(running).model_fields
        if name not in SECRETS_RELOADED
        for change in differences(f"secrets.{name}", getattr(running, name), getattr(new, name))
    ]


def _needs(gateway: GatewayConfig) -> dict[str, bool]:
    routes = gateway.routes
    return {
        "API keys (a route with auth api_key)": any("api_key" in r.auth for r in routes),
        "introspection (a route with auth introspection)": any(
            "introspection" in r.auth for r in routes
        ),
        "rate limiting (rate_limits)": bool(gateway.rate_limits)
        or any(r.rate_limits for r in routes),
    }


def restart_only(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """What ``new`` changes in the gateway's section that its reload cannot apply (empty:
    it can)."""
    problems = [
        f"gateway.{key} changed"
        for key in RESTART_ONLY
        if getattr(running, key) != getattr(new, key)
    ]
    had = _needs(running)
    problems += [
        f"{part} is needed and the running gateway did not start it"
        for part, needed in _needs(new).items()
        if needed and not had[part]
    ]
    return problems
