"""Service-to-service authorization, compiled from the declaration's ``calls`` into Cedar.

Every ``allow`` item of every call becomes one Cedar policy::

    @id("calls[0].allow[1]")
    permit (
        principal == Workload::"spiffe://shop.example/orders",
        action == Action::"GET",
        resource == Route::"payments GET /charges/{id}"
    );

A request (caller SPIFFE ID, method, canonical path) to a callee is first matched against
the callee's declared patterns — the candidate routes — and Cedar decides for each; the
call is allowed if any candidate is permitted. No candidate, no permit: deny. The policy
set is parsed once; decisions are cached per (caller, method, route).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import cedarpy

from trustmesh.config import TrustmeshConfig
from trustmesh.policy.routes import Pattern
from trustmesh.reasons import Reason

__all__ = ["CallAuthorizer", "CallDecision", "compile_call_policies"]


@dataclass(frozen=True)
class CallDecision:
    allowed: bool
    reason: Reason
    route: str | None = None
    policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Route:
    id: str
    method: str
    pattern: Pattern


def _quote(value: str) -> str:
    return json.dumps(value)  # a Cedar string literal: JSON escaping is compatible


def compile_call_policies(config: TrustmeshConfig) -> str:
    """The Cedar policy text for every allowed call in the declaration."""
    out: list[str] = []
    for i, call in enumerate(config.calls):
        principal = config.spiffe_id(call.from_)
        for j, rule in enumerate(call.rules):
            action = "action" if rule.method == "*" else f"action == Action::{_quote(rule.method)}"
            route = f"{call.to} {rule.method} {rule.pattern}"
            out.append(_permit(f"calls[{i}].allow[{j}]", principal, action, route))
    if config.gateway is not None:  # each gateway route implies the call gateway → service
        gateway = config.component_spiffe_id("gateway")
        for i, gw_route in enumerate(config.gateway.routes):
            for method, pattern in gw_route.operations():
                route = f"{gw_route.to} {method} {pattern}"
                action = f"action == Action::{_quote(method)}"
                out.append(_permit(f"gateway.routes[{i}]", gateway, action, route))
    return "\n".join(out)


def _permit(policy_id: str, principal: str, action: str, route: str) -> str:
    return (
        f"@id({_quote(policy_id)})\n"
        f"permit (\n"
        f"    principal == Workload::{_quote(principal)},\n"
        f"    {action},\n"
        f"    resource == Route::{_quote(route)}\n"
        f");\n"
    )


#: What an authorizer that does not enforce the call policy answers (the test switch
#: ``call-policy``, :mod:`trustmesh.config.switches`): allowed, and its event says why.
_NOT_ENFORCED = CallDecision(True, Reason.POLICY_ALLOW, None, ("testing:call-policy-off",))


def _not_enforced(_caller: str, _method: str, _path: str) -> CallDecision:
    return _NOT_ENFORCED


@dataclass
class CallAuthorizer:
    """Decides calls *to* one service (``callee``), from a compiled declaration.
    ``enforced`` False (only under the test switch ``call-policy``): every call is
    allowed, decided once here, so the middleware's path is the same either way."""

    config: TrustmeshConfig
    callee: str
    enforced: bool = field(default=True, kw_only=True)
    routes: tuple[_Route, ...] = field(init=False)
    policy_text: str = field(init=False)

    def __post_init__(self) -> None:
        self.policy_text = compile_call_policies(self.config)
        self._policies = cedarpy.PolicySet.from_str(self.policy_text) if self.policy_text else None
        self._entities = cedarpy.Entities.from_json_str("[]")
        routes: dict[str, _Route] = {}
        for call in self.config.calls:
            if call.to != self.callee:
                continue
            for rule in call.rules:
                route_id = f"{call.to} {rule.method} {rule.pattern}"
                routes[route_id] = _Route(route_id, rule.method, Pattern.parse(rule.pattern))
        for gw_route in self.config.gateway.routes if self.config.gateway else ():
            if gw_route.to != self.callee:
                continue
            for method, pattern in gw_route.operations():
                route_id = f"{gw_route.to} {method} {pattern}"
                routes[route_id] = _Route(route_id, method, Pattern.parse(pattern))
        self.routes = tuple(routes.values())
        self._decide_route = lru_cache(maxsize=8192)(self._cedar)
        # whole decisions, by (caller, method, path): the same few calls repeat
        self._decided: Callable[[str, str, str], CallDecision] = (
            lru_cache(maxsize=16384)(self._decide) if self.enforced else _not_enforced
        )

    def candidates(self, method: str, path: str) -> Iterable[_Route]:
        for route in self.routes:
            if route.method in ("*", method) and route.pattern.matches(path):
                yield route

    def decide(self, caller: str, method: str, path: str) -> CallDecision:
        """``path`` must be canonical (see :func:`trustmesh.policy.paths.canonical_path`)."""
        return self._decided(caller, method, path)

    def _decide(self, caller: str, method: str, path: str) -> CallDecision:
        denied = CallDecision(False, Reason.POLICY_DENY)
        for route in self.candidates(method, path):
            decision = self._decide_route(caller, method, route.id)
            if decision.allowed:
                return decision
            denied = decision
        return denied

    def _cedar(self, caller: str, method: str, route_id: str) -> CallDecision:
        if self._policies is None:
            return CallDecision(False, Reason.POLICY_DENY, route_id)
        result = cedarpy.is_authorized(
            {
                "principal": {"type": "Workload", "id": caller},
                "action": {"type": "Action", "id": method},
                "resource": {"type": "Route", "id": route_id},
                "context": {},
            },
            self._policies,
            self._entities,
        )
        if result.allowed:
            names = result.diagnostics.id_annotations_by_reason
            ids = tuple(names.get(r, r) for r in result.diagnostics.reasons)
            return CallDecision(True, Reason.POLICY_ALLOW, route_id, ids)
        return CallDecision(False, Reason.POLICY_DENY, route_id)
