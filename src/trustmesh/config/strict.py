"""``trustmesh config check --strict``: what a valid declaration may still not ship with.

A declaration that loads is valid; strict mode refuses, on top of that, what makes a
deployment weaker than it looks (each problem as ``file:line: key.path: what (expected
…)``, like every config error):

- **a service without a policy:** a declared service (not ``external``) that no ``calls``
  item and no gateway route reaches, so nothing decides who may call it; a gateway whose
  routes have no Cedar policies (``gateway.policies`` unset: a route then admits whoever
  authenticates); a route that no ``permit`` of those policies names;
- **a wildcard allow:** a ``calls`` rule on every path of a service (``"GET /*"``,
  ``"* /*"``); a Cedar ``permit`` with no condition (``when { true }`` is none) whose action and
  resource are unconstrained — it grants its principals everything;
- **a lifetime outside these bounds** (:data:`LIFETIME_BOUNDS`; the loader's own limits are
  wider, for a lab): X.509-SVIDs 5m–24h (``identity.svid_ttl``, ``identity.max_svid_ttl``);
  JWT-SVIDs 1m–15m; access tokens 1m–15m (RFC 9700 §2.2.2 asks for short-lived ones: a
  stolen token is worth its remaining lifetime); the gateway's internal tokens 10s–2m (one
  hop); the secrets service's login tokens at most 1h, renewable to at most 24h;
- **a test switch:** ``testing.defences_off`` names a defence turned off for a test
  (:mod:`trustmesh.config.switches`); a declaration to ship has no ``testing:`` section.

Pure: the declaration, its text and its policies' texts in, problems out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Final

import cedarpy
import yaml

from trustmesh.config.durations import format_duration
from trustmesh.config.loader import _line_of
from trustmesh.config.models import TrustmeshConfig

__all__ = ["LIFETIME_BOUNDS", "strict_problems", "switch_problems"]

_M: Final = timedelta(minutes=1)
_H: Final = timedelta(hours=1)

#: key path → (getter, lowest, highest): the lifetimes strict mode accepts.
LIFETIME_BOUNDS: Final[
    Mapping[
        tuple[str | int, ...],
        tuple[Callable[[TrustmeshConfig], timedelta | None], timedelta, timedelta],
    ]
] = {
    ("identity", "svid_ttl"): (lambda c: c.identity.svid_ttl, 5 * _M, 24 * _H),
    ("identity", "max_svid_ttl"): (lambda c: c.identity.max_svid_ttl, 5 * _M, 24 * _H),
    ("identity", "jwt_svid_ttl"): (lambda c: c.identity.jwt_svid_ttl, _M, 15 * _M),
    ("auth", "access_token_ttl"): (lambda c: c.auth.access_token_ttl, _M, 15 * _M),
    ("gateway", "internal_token_ttl"): (
        lambda c: c.gateway.internal_token_ttl if c.gateway else None,
        timedelta(seconds=10),
        2 * _M,
    ),
    ("secrets", "token_ttl"): (
        lambda c: c.secrets.token_ttl if c.secrets else None,
        timedelta(seconds=10),
        _H,
    ),
    ("secrets", "token_max_ttl"): (
        lambda c: c.secrets.token_max_ttl if c.secrets else None,
        timedelta(seconds=10),
        24 * _H,
    ),
}


def strict_problems(
    config: TrustmeshConfig,
    text: str,
    source: str,
    policies: Mapping[str, str],
) -> list[str]:
    """Every strict-mode problem of ``config`` (parsed from ``text``, read from ``source``);
    ``policies`` maps each ``gateway.policies`` name to its Cedar text."""
    found = [
        *_lifetimes(config),
        *_unreached_services(config),
        *_wildcard_calls(config),
        *_edge_policies(config, policies),
        *_test_switches(config),
    ]
    return _located(found, text, source)


def switch_problems(config: TrustmeshConfig, text: str, source: str) -> list[str]:
    """The test switches of ``config`` as strict mode names them (empty: none): what a
    command that deploys a declaration refuses too (``trustmesh k8s render``)."""
    return _located(list(_test_switches(config)), text, source)


_Problem = tuple[tuple[str | int, ...], str, str, str]


def _located(problems: list[_Problem], text: str, source: str) -> list[str]:
    """Each problem as ``source:line: key: what (expected …)``."""
    root = yaml.compose(text, Loader=yaml.SafeLoader) if problems else None

    def at(loc: tuple[str | int, ...], key: str, what: str, expected: str) -> str:
        line = 1 if root is None else _line_of(root, loc)
        return f"{source}:{line}: {key}: {what} (expected {expected})"

    return [at(*p) for p in problems]


def _lifetimes(config: TrustmeshConfig) -> Iterator[_Problem]:
    f = format_duration
    for loc, (get, low, high) in LIFETIME_BOUNDS.items():
        value = get(config)
        if value is not None and not low <= value <= high:
            key = ".".join(str(part) for part in loc)
            side = "longer" if value > high else "shorter"
            yield (
                loc,
                key,
                f"{f(value)} is {side} than strict mode allows",
                f"from {f(low)} to {f(high)}",
            )


def _test_switches(config: TrustmeshConfig) -> Iterator[_Problem]:
    if config.testing is None:
        return
    for i, name in enumerate(config.testing.defences_off):
        yield (
            ("testing", "defences_off", i),
            f"testing.defences_off[{i}]",
            f"the test switch {name!r} turns a defence off",
            "no testing: section in a declaration to ship",
        )
    if not config.testing.defences_off:  # an empty section still says "test only"
        yield (("testing",), "testing", "a test-only section", "no testing: section")


def _unreached_services(config: TrustmeshConfig) -> Iterator[_Problem]:
    reached = {call.to for call in config.calls}
    if config.gateway is not None:
        reached |= {route.to for route in config.gateway.routes}
    for name, spec in config.services.items():
        if not spec.external and name not in reached:
            yield (
                ("services", name),
                f"services.{name}",
                "declared without a policy: no calls item and no gateway route reaches it",
                "a calls item or a gateway route to it, or no such service",
            )


def _wildcard_calls(config: TrustmeshConfig) -> Iterator[_Problem]:
    for i, call in enumerate(config.calls):
        for j, rule in enumerate(call.rules):
            if rule.pattern == "/*":
                yield (
                    ("calls", i, "allow", j),
                    f"calls[{i}].allow[{j}]",
                    f"{call.allow[j]!r} lets {call.from_} call every path of {call.to}",
                    "the routes it needs, e.g. 'GET /items/{id}'",
                )


def _edge_policies(config: TrustmeshConfig, policies: Mapping[str, str]) -> Iterator[_Problem]:
    gateway = config.gateway
    if gateway is None or not gateway.routes:
        return
    if not gateway.policies:
        yield (
            ("gateway",),
            "gateway.policies",
            "not set: each route admits whoever passes its authentication",
            "Cedar policies that decide on every route",
        )
        return
    named: set[str] = set()
    every_route = False
    for i, name in enumerate(gateway.policies):
        text = policies.get(name, "")
        document = json.loads(cedarpy.policies_to_json_str(text)) if text.strip() else {}
        for key, policy in (document.get("staticPolicies") or {}).items():
            if policy.get("effect") != "permit":
                continue
            resource = policy.get("resource") or {}
            if resource.get("op") in ("All", "is"):
                every_route = True
            elif isinstance(resource.get("entity"), dict):
                named.add(str(resource["entity"].get("id")))
            if _is_wildcard(policy):
                label = (policy.get("annotations") or {}).get("id", key)
                yield (
                    ("gateway", "policies", i),
                    f"gateway.policies[{i}]",
                    f"{name}: permit {label!r} allows every action on every route with no "
                    "condition",
                    "a permit scoped to routes or actions, or with a condition",
                )
    if every_route:
        return
    for i, route in enumerate(gateway.routes):
        if route.route_name not in named:
            yield (
                ("gateway", "routes", i),
                f"gateway.routes[{i}]",
                f"route {route.route_name!r} has no permit in gateway.policies: "
                "no policy decides on it",
                f'a permit naming resource == Route::"{route.route_name}"',
            )


def _is_wildcard(policy: Mapping[str, Any]) -> bool:
    """A permit that constrains neither action nor resource, under no real condition."""
    unconstrained = (policy.get("action") or {}).get("op") == "All" and (
        policy.get("resource") or {}
    ).get("op") == "All"
    trivial = (
        {"kind": "when", "body": {"Value": True}},
        {"kind": "unless", "body": {"Value": False}},
    )
    conditions = [c for c in policy.get("conditions") or () if c not in trivial]
    return unconstrained and not conditions
