"""Who may call what, computed from the declaration and its compiled policies (pure: no
sockets; the policy files are read once by :func:`~trustmesh.policy.edge.load_edge_policy`).

Three tables, each decided by the code that decides at run time, never re-implemented:

- **users through the gateway**: every principal kind (anonymous; a signed-in user with
  each declared role; an admin signed in without and with a second factor) × every
  operation of every gateway route (method and path template). The principal is built
  from the claims a provider token carries (:meth:`Principal.from_claims`, as the
  gateway does), the path is matched to the route's operations
  (:class:`~trustmesh.policy.routes.Operations`, as the gateway does), and the request is
  decided by :meth:`EdgePolicy.decide` with the gateway's :class:`EdgeRequest`. An
  anonymous route takes no credential, so the gateway asks the policies about
  ``Anonymous`` whoever calls; on any other route a caller without a credential is
  refused before any policy (``token-missing``, 401).
- **service to service**: the declaration's ``calls`` and the gateway → service calls
  each route implies, each confirmed allowed by the compiled call policies
  (:class:`~trustmesh.policy.calls.CallAuthorizer`); every other caller → callee pair is
  denied, and that too is confirmed for every operation the callee serves.
- **secrets**: what each identity may do on which path, as the declaration's
  ``secrets.policies`` grant it (the secrets service refuses everything else).

The context of the user decisions is fixed (:data:`CLIENT_IP`, :data:`DECIDED_AT`) so
the matrix is deterministic; :attr:`UserMatrix.context_reads` says which context
fields the policies read, i.e. where a decision could differ at another time or address.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from trustmesh.config import TrustmeshConfig
from trustmesh.config.gateway import GatewayRoute
from trustmesh.config.patterns import PARAM_RE
from trustmesh.policy.calls import CallAuthorizer
from trustmesh.policy.edge import ANONYMOUS, EdgePolicy, EdgeRequest, Principal, load_edge_policy
from trustmesh.policy.routes import Operations
from trustmesh.reasons import Reason

__all__ = [
    "CLIENT_IP",
    "DECIDED_AT",
    "AccessMatrix",
    "Cell",
    "DeniedPair",
    "Operation",
    "PrincipalKind",
    "SecretGrant",
    "ServiceCall",
    "UserMatrix",
    "access_matrix",
    "principal_kinds",
]

#: The client address and the moment every user decision is asked at (a Monday noon UTC,
#: as ``trustmesh policy test`` defaults to).
CLIENT_IP: Final = "127.0.0.1"
DECIDED_AT: Final = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
_SAMPLE: Final = "example"  # the value a placeholder (or a final *) takes in a sample path


@dataclass(frozen=True)
class PrincipalKind:
    """A column of the user matrix: its label, and the principal the gateway would build
    from such a caller's token (None: no credential at all)."""

    label: str
    principal: Principal | None


@dataclass(frozen=True)
class Operation:
    """A row: one operation of a gateway route."""

    route: str  # the route's name (its Cedar Route id)
    method: str
    template: str
    service: str
    auth: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


@dataclass(frozen=True)
class Cell:
    """One decision: allowed or not, its reason, the policies that decided (``permits``
    when allowed, the ``forbids`` that applied when denied: none is a default deny), and
    how it was reached (``as_anonymous``: the route takes no credential)."""

    allowed: bool
    reason: Reason
    permits: tuple[str, ...] = ()
    forbids: tuple[str, ...] = ()
    as_anonymous: bool = False
    error: str | None = None

    @property
    def before_policy(self) -> bool:
        """Refused before any policy was asked (no credential, no such operation)."""
        return self.reason not in (Reason.POLICY_ALLOW, Reason.POLICY_DENY)


@dataclass(frozen=True)
class UserMatrix:
    policy_files: tuple[str, ...]  # empty: no policies declared (every credential passes)
    context_reads: tuple[str, ...]
    kinds: tuple[PrincipalKind, ...]
    operations: tuple[Operation, ...]
    cells: tuple[tuple[Cell, ...], ...]  # per operation, per kind

    def cell(self, operation: str, kind: str) -> Cell:
        """The decision for ``"METHOD /template"`` and the kind labelled ``kind``."""
        row = next(i for i, op in enumerate(self.operations) if op.name == operation)
        column = next(i for i, k in enumerate(self.kinds) if k.label == kind)
        return self.cells[row][column]


@dataclass(frozen=True)
class ServiceCall:
    caller: str
    caller_id: str
    callee: str
    callee_id: str
    method: str
    pattern: str
    source: str  # calls[i].allow[j] or gateway.routes[i]
    allowed: bool  # what the compiled call policies answer for it


@dataclass(frozen=True)
class DeniedPair:
    """A caller → callee pair the declaration grants nothing: every operation the callee
    serves, asked of the compiled call policies, and how many were (wrongly) allowed."""

    caller: str
    callee: str
    asked: int
    allowed: int


@dataclass(frozen=True)
class SecretGrant:
    identity: str
    path: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class AccessMatrix:
    trust_domain: str
    source: str  # the declaration's file name
    users: UserMatrix | None  # None: no gateway
    calls: tuple[ServiceCall, ...]
    denied: tuple[DeniedPair, ...]
    secrets: tuple[SecretGrant, ...]
    secrets_declared: bool


def principal_kinds(config: TrustmeshConfig) -> tuple[PrincipalKind, ...]:
    """Anonymous; a user with each declared role (password only); an admin without and
    with a second factor — each built from the claims a provider token carries."""

    def user(role: str, amr: list[str]) -> Principal:
        name = f"example-{role}"
        claims = {"sub": name, "preferred_username": name, "roles": [role], "amr": amr}
        return Principal.from_claims({**claims, "auth_time": 0})

    roles = [r for r in dict.fromkeys(config.auth.roles) if r != "admin"]
    return (
        PrincipalKind("anonymous", None),
        *(PrincipalKind(role, user(role, ["pwd"])) for role in roles),
        PrincipalKind("admin without MFA", user("admin", ["pwd"])),
        PrincipalKind("admin with MFA", user("admin", ["pwd", "otp"])),
    )


def sample_path(template: str) -> str:
    """A concrete path of ``template``: each placeholder, and a final ``*``, a sample."""
    path = PARAM_RE.sub(_SAMPLE, template)
    return path[:-1] + _SAMPLE if path.endswith("*") else path


def _decide(
    policy: EdgePolicy | None,
    route: GatewayRoute,
    operations: Operations,
    method: str,
    template: str,
    kind: PrincipalKind,
) -> Cell:
    anonymous_route = route.auth == ["anonymous"]
    if kind.principal is None and not anonymous_route:
        return Cell(False, Reason.TOKEN_MISSING)
    path = sample_path(template)
    found = operations.match(method, path)
    if found.reason != Reason.ROUTE_MATCHED or found.template != template:
        return Cell(False, found.reason)
    principal = ANONYMOUS if anonymous_route or kind.principal is None else kind.principal
    as_anonymous = anonymous_route and kind.principal is not None
    if policy is None:  # no policies declared: an authenticated request goes on
        return Cell(True, Reason.POLICY_ALLOW, as_anonymous=as_anonymous)
    decision = policy.decide(
        EdgeRequest(
            principal=principal,
            method=method,
            route=route.route_name,
            ip=CLIENT_IP,
            path=path,
            host=route.host or "",
            service=route.to,
            time=int(DECIDED_AT.timestamp()),
            template=found.template,
            params=found.params,
        )
    )
    # Cedar names the permits that applied when it allows, the forbids when it denies
    ids = tuple(decision.policies)
    return Cell(
        decision.allowed,
        decision.reason,
        permits=ids if decision.allowed else (),
        forbids=() if decision.allowed else ids,
        as_anonymous=as_anonymous,
        error=decision.error,
    )


def user_matrix(config: TrustmeshConfig, config_dir: Path) -> UserMatrix | None:
    gateway = config.gateway
    if gateway is None:
        return None
    policy = load_edge_policy(config, config_dir)
    kinds = principal_kinds(config)
    rows: list[Operation] = []
    cells: list[tuple[Cell, ...]] = []
    for route in gateway.routes:
        operations = Operations(route.operations())
        for method, template in route.operations():
            rows.append(Operation(route.route_name, method, template, route.to, tuple(route.auth)))
            cells.append(
                tuple(_decide(policy, route, operations, method, template, k) for k in kinds)
            )
    return UserMatrix(
        policy_files=tuple(gateway.policies),
        context_reads=tuple(sorted(policy.context_reads)) if policy is not None else (),
        kinds=kinds,
        operations=tuple(rows),
        cells=tuple(cells),
    )


def _service_calls(config: TrustmeshConfig) -> tuple[list[ServiceCall], list[DeniedPair]]:
    gateway_id = config.component_spiffe_id("gateway")
    callees = sorted(
        {c.to for c in config.calls}
        | {r.to for r in (config.gateway.routes if config.gateway else ())}
        | {name for name, spec in config.services.items() if not spec.external}
    )
    authorizers = {name: CallAuthorizer(config, name) for name in callees}
    ids = {name: config.spiffe_id(name) for name in config.services} | {"gateway": gateway_id}
    calls: list[ServiceCall] = []
    granted: set[tuple[str, str]] = set()
    for i, call in enumerate(config.calls):
        granted.add((call.from_, call.to))
        for j, rule in enumerate(call.rules):
            allowed = authorizers[call.to].decide(
                ids[call.from_], rule.method, sample_path(rule.pattern)
            )
            calls.append(
                ServiceCall(
                    call.from_,
                    ids[call.from_],
                    call.to,
                    ids[call.to],
                    rule.method,
                    rule.pattern,
                    f"calls[{i}].allow[{j}]",
                    allowed.allowed,
                )
            )
    for i, route in enumerate(config.gateway.routes if config.gateway else ()):
        granted.add(("gateway", route.to))
        for method, template in route.operations():
            allowed = authorizers[route.to].decide(gateway_id, method, sample_path(template))
            calls.append(
                ServiceCall(
                    "gateway",
                    gateway_id,
                    route.to,
                    ids[route.to],
                    method,
                    template,
                    f"gateway.routes[{i}]",
                    allowed.allowed,
                )
            )
    denied: list[DeniedPair] = []
    for caller in ["gateway", *sorted(config.services)]:
        for callee in callees:
            if caller == callee or (caller, callee) in granted:
                continue
            routes = authorizers[callee].routes
            wrongly = sum(
                authorizers[callee]
                .decide(
                    ids[caller], r.method if r.method != "*" else "GET", sample_path(r.pattern.text)
                )
                .allowed
                for r in routes
            )
            denied.append(DeniedPair(caller, callee, len(routes), wrongly))
    return calls, denied


def access_matrix(config: TrustmeshConfig, config_path: Path) -> AccessMatrix:
    """The whole matrix; :class:`~trustmesh.errors.ConfigError` when the policies do not
    load (as at the gateway's start)."""
    calls, denied = _service_calls(config)
    grants = []
    if config.secrets is not None:
        for policy in config.secrets.policies:
            for path, capabilities in sorted(policy.allow.items()):
                grants.append(SecretGrant(policy.identity, path, tuple(capabilities)))
    return AccessMatrix(
        trust_domain=config.trust_domain,
        source=config_path.name,
        users=user_matrix(config, config_path.parent),
        calls=tuple(calls),
        denied=tuple(denied),
        secrets=tuple(grants),
        secrets_declared=config.secrets is not None,
    )
