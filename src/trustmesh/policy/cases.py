"""Policy test cases: requests with the decision the author expects, kept next to the
policies (``shop.cedar`` → ``shop.tests.yaml``) and run by ``trustmesh policy test``::

    - name: a customer may place an order
      principal: {type: User, id: alice, roles: [customer]}
      action: POST
      resource: /orders                  # a route name
      context: {path: /orders, ip: 203.0.113.9, time: "2026-01-05T12:00:00Z"}
      expect: allow

Unset context fields take the route's values (path = its prefix, service = its target),
``ip`` 127.0.0.1 and a fixed weekday noon; an unset ``principal.issuer`` is the
provider's (``trustmesh``), or ``""`` for ``Anonymous``, as at the gateway. The template
and its values come from matching the path to the route's operations, as the gateway
does; a path the gateway refuses before any policy (not canonical, a trailing slash no
template declares, no such operation or method) is a deny with that reason. Each other
case is decided by the same compiled
:class:`~trustmesh.policy.edge.EdgePolicy` the gateway runs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trustmesh.config import TrustmeshConfig
from trustmesh.config.gateway import PROVIDER_ISSUER, GatewayRoute
from trustmesh.errors import ConfigError
from trustmesh.policy.edge import EdgeDecision, EdgePolicy, EdgeRequest, Principal
from trustmesh.policy.paths import NonCanonicalPath, canonical_path
from trustmesh.policy.routes import Operations
from trustmesh.reasons import Reason

__all__ = ["CaseResult", "PolicyCase", "load_cases", "run_cases", "tests_file_for"]

_MODEL: Final = ConfigDict(frozen=True, extra="forbid")
_DEFAULT_TIME: Final = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)  # a Monday, noon UTC
_MAX_BYTES: Final = 1 << 20


class CasePrincipal(BaseModel):
    model_config = _MODEL

    type: Literal["User", "Client", "ApiKey", "Anonymous"] = "User"
    id: str = Field(default="anonymous", min_length=1, max_length=256)
    roles: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    amr: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    mfa: bool = False
    name: str = ""
    issuer: str | None = Field(default=None, max_length=256)

    def issued_by(self) -> str:
        if self.issuer is not None:
            return self.issuer
        return "" if self.type == "Anonymous" else PROVIDER_ISSUER


class CaseContext(BaseModel):
    model_config = _MODEL

    ip: str = "127.0.0.1"
    path: str | None = None
    host: str = ""
    time: dt.datetime = _DEFAULT_TIME


class PolicyCase(BaseModel):
    model_config = _MODEL

    name: str = Field(min_length=1, max_length=200)
    principal: CasePrincipal = Field(default_factory=CasePrincipal)
    action: str
    resource: str
    context: CaseContext = Field(default_factory=CaseContext)
    expect: Literal["allow", "deny"]


@dataclass(frozen=True)
class CaseResult:
    file: str
    case: PolicyCase
    decision: EdgeDecision

    @property
    def passed(self) -> bool:
        return self.decision.allowed == (self.case.expect == "allow")


def tests_file_for(policy_file: Path) -> Path:
    return policy_file.with_name(policy_file.stem + ".tests.yaml")


def load_cases(path: Path) -> list[PolicyCase]:
    """Parse one tests file; raise :class:`ConfigError` naming the case and key."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise _error(f"{path}: cannot be read: {exc.strerror}") from None
    if len(data) > _MAX_BYTES:
        raise _error(f"{path}: larger than {_MAX_BYTES} bytes")
    try:
        document = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(document, list):
        raise _error(f"{path}: expected a list of test cases")
    cases: list[PolicyCase] = []
    problems: list[str] = []
    for index, item in enumerate(document):
        try:
            cases.append(PolicyCase.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                problems.append(f"{path}: case {index}: {where}: {error['msg']}")
    if problems:
        raise ConfigError("\n".join(problems), problems=tuple(problems))
    return cases


def run_cases(
    policy: EdgePolicy, config: TrustmeshConfig, config_dir: Path
) -> tuple[list[CaseResult], list[str]]:
    """Run the cases kept next to every policy file: (results, files without cases)."""
    gateway = config.gateway
    if gateway is None:
        return [], []
    routes = {route.route_name: route for route in gateway.routes}
    compiled: dict[str, Operations] = {}
    results: list[CaseResult] = []
    missing: list[str] = []
    problems: list[str] = []
    for name in policy.sources:
        tests = tests_file_for(config_dir / name)
        if not tests.exists():
            missing.append(name)
            continue
        for index, case in enumerate(load_cases(tests)):
            route = routes.get(case.resource)
            if route is None:
                problems.append(
                    f"{tests}: case {index} ({case.name}): resource {case.resource!r} is not a "
                    f"route (expected one of: {', '.join(sorted(routes))})"
                )
                continue
            try:
                ipaddress.ip_address(case.context.ip)
            except ValueError:
                problems.append(f"{tests}: case {index}: context.ip is not an IP address")
                continue
            operations = compiled.get(route.route_name)
            if operations is None:
                operations = compiled[route.route_name] = Operations(route.operations())
            asked = _request(case, route, operations)
            decision = policy.decide(asked) if isinstance(asked, EdgeRequest) else asked
            results.append(CaseResult(str(tests), case, decision))
    if problems:
        raise ConfigError("\n".join(problems), problems=tuple(problems))
    return results, missing


def _request(
    case: PolicyCase, route: GatewayRoute, operations: Operations
) -> EdgeRequest | EdgeDecision:
    """What the gateway would ask the policies for this case, or its refusal before."""
    path = case.context.path or route.path
    try:
        path = canonical_path(path.encode("utf-8"))
    except NonCanonicalPath:
        return EdgeDecision(False, Reason.PATH_NON_CANONICAL)
    found = operations.match(case.action, path)
    if found.reason != Reason.ROUTE_MATCHED:
        return EdgeDecision(False, found.reason)
    moment = case.context.time
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    p = case.principal
    return EdgeRequest(
        principal=Principal(
            p.type,
            p.id,
            roles=tuple(sorted(set(p.roles))),
            groups=tuple(sorted(set(p.groups))),
            amr=tuple(sorted(set(p.amr))),
            scopes=tuple(sorted(set(p.scopes))),
            mfa=p.mfa,
            name=p.name,
            issuer=p.issued_by(),
        ),
        method=case.action,
        route=case.resource,
        ip=case.context.ip,
        path=path,
        host=case.context.host,
        service=route.to,
        time=int(moment.timestamp()),
        template=found.template,
        params=found.params,
    )


def _error(line: str) -> ConfigError:
    return ConfigError(line, problems=(line,))
