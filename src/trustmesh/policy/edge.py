"""Authorization at the edge: the user's own Cedar policies decide every gateway request.

The policies live in ``.cedar`` files named by ``gateway.policies`` and are validated at
load against a Cedar schema generated from the declaration (:func:`edge_schema`), so a
policy that names an unknown route, action or attribute is a config error, not a silent
deny at run time. The request the gateway asks about is::

    principal  User::"<sub>" | Client::"<client_id>" | ApiKey::"<id>" | Anonymous::"anonymous"
               with roles, groups, amr, scopes (sets of strings), mfa (bool), name and
               issuer (strings: "trustmesh" for the provider's tokens and the gateway's
               API keys, the issuer's URL for another OpenID Provider's, "" for Anonymous)
    action     Action::"<HTTP method>"            (only methods some route declares)
    resource   Route::"<route name>"              (an enumerated entity type: the routes)
    context    ip (ipaddr: an IPv4 client as IPv4, however spelled), method, path, host, service (strings),
               template (Template::"<path template>", an enumerated entity type: every
               route's operations, e.g. Template::"/orders/{id}/refund", or for a route
               that lists none Template::"/orders" and Template::"/orders/*"),
               params (a record: the matched template's placeholder values, each
               attribute optional, named after every placeholder the routes declare),
               time (epoch seconds), hour (0-23 UTC), weekday (1 = Monday … 7, ISO 8601)

Policies decide on the operation (``context.template == Template::"/orders/{id}/refund"``)
rather than on the raw path: the gateway matched the path to that template exactly, so no
other spelling of it (a trailing slash, another case) is that operation.

Default deny: no ``permit`` that applies, or any ``forbid`` that does, refuses. Decisions
are cached per (principal and its attributes, action, route, the context fields the
policies actually read), so a policy that never reads ``context.time`` is not re-run
every second. Pure: parsed once, no I/O but reading the files at load.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import cedarpy

from trustmesh.config import TrustmeshConfig
from trustmesh.config.gateway import PROVIDER_ISSUER, GatewayConfig
from trustmesh.config.patterns import placeholders
from trustmesh.errors import ConfigError
from trustmesh.reasons import Reason

__all__ = [
    "ANONYMOUS",
    "CONTEXT_FIELDS",
    "PRINCIPAL_TYPES",
    "EdgeDecision",
    "EdgePolicy",
    "EdgeRequest",
    "Principal",
    "edge_schema",
    "load_edge_policy",
]

PRINCIPAL_TYPES: Final = ("User", "Client", "ApiKey", "Anonymous")
#: The context record's fields and their Cedar types.
CONTEXT_FIELDS: Final = {
    "ip": "ipaddr",
    "method": "String",
    "path": "String",
    "host": "String",
    "service": "String",
    "template": "Template",
    "params": "Params",
    "time": "Long",
    "hour": "Long",
    "weekday": "Long",
}
_PRINCIPAL_ATTRS: Final = (
    "roles: Set<String>, groups: Set<String>, amr: Set<String>, scopes: Set<String>, "
    "mfa: Bool, name: String, issuer: String"
)
_MAX_POLICY_BYTES: Final = 1 << 20
_CACHE_SIZE: Final = 16384


@dataclass(frozen=True)
class Principal:
    """Who asks: the type is one of :data:`PRINCIPAL_TYPES`; sets are sorted tuples so that
    the value can key the decision cache."""

    type: str
    id: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    mfa: bool = False
    name: str = ""
    issuer: str = ""

    @classmethod
    def from_claims(
        cls, claims: Mapping[str, Any], *, issuer: str = PROVIDER_ISSUER, kind: str | None = None
    ) -> Principal:
        """A token's subject. ``issuer``: who vouched for the claims; ``kind``: the type
        its declaration gives it. Unset (the provider's own tokens), a user is one who
        signed in (``auth_time``), anyone else a client. Another issuer's claims come here
        already namespaced and filtered (see :mod:`trustmesh.gateway.oidc`)."""
        roles = _strings(claims.get("roles"))
        amr = _strings(claims.get("amr"))
        scope = claims.get("scope")
        scopes = tuple(sorted(set(scope.split()))) if isinstance(scope, str) else ()
        if kind is None:
            kind = "User" if "auth_time" in claims or "preferred_username" in claims else "Client"
        name = claims.get("preferred_username") or claims.get("client_id") or ""
        return cls(
            kind,
            str(claims.get("sub", "")),
            roles=roles,
            groups=_strings(claims.get("groups")),
            amr=amr,
            scopes=scopes,
            mfa=bool({"otp", "mfa", "hwk", "swk"} & set(amr)),  # RFC 8176 methods
            name=str(name),
            issuer=issuer,
        )

    def entity(self) -> dict[str, Any]:
        return {
            "uid": {"type": self.type, "id": self.id},
            "attrs": {
                "roles": list(self.roles),
                "groups": list(self.groups),
                "amr": list(self.amr),
                "scopes": list(self.scopes),
                "mfa": self.mfa,
                "name": self.name,
                "issuer": self.issuer,
            },
            "parents": [],
        }


ANONYMOUS: Final = Principal("Anonymous", "anonymous")


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(sorted({v for v in value if isinstance(v, str)}))
    return ()


@dataclass(frozen=True)
class EdgeRequest:
    principal: Principal
    method: str
    route: str  # the route's name
    ip: str
    path: str
    host: str
    service: str
    time: int
    template: str  # the route's path template the path matched
    params: tuple[tuple[str, str], ...] = ()  # its placeholders' values

    def context(self) -> dict[str, Any]:
        at = dt.datetime.fromtimestamp(self.time, dt.UTC)
        return {
            "ip": {"__extn": {"fn": "ip", "arg": self.ip}},
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "service": self.service,
            "template": {"__entity": {"type": "Template", "id": self.template}},
            "params": dict(self.params),
            "time": self.time,
            "hour": at.hour,
            "weekday": at.isoweekday(),
        }


@dataclass(frozen=True)
class EdgeDecision:
    allowed: bool
    reason: Reason
    policies: tuple[str, ...] = ()  # the @id (or position) of the policies that decided
    error: str | None = None  # an evaluation error (then: deny)


def edge_schema(gateway: GatewayConfig) -> str:
    """The Cedar schema (human-readable syntax) generated from the ``gateway:`` section."""
    routes = sorted({route.route_name for route in gateway.routes})
    methods = sorted({m for route in gateway.routes for m in route.methods})
    templates = sorted({t for route in gateway.routes for _, t in route.operations()})
    params = sorted({p for t in templates for p in placeholders(t)})
    lines = [f"entity {kind} = {{ {_PRINCIPAL_ATTRS} }};" for kind in PRINCIPAL_TYPES]
    for kind, names in (("Route", routes), ("Template", templates)):
        if names:
            lines.append(f"entity {kind} enum [{', '.join(json.dumps(n) for n in names)}];")
        else:
            lines.append(f"entity {kind};")
    lines.append(f"type Params = {{ {', '.join(f'{json.dumps(p)}?: String' for p in params)} }};")
    fields = ", ".join(f"{name}: {kind}" for name, kind in CONTEXT_FIELDS.items())
    lines.append(f"type RequestContext = {{ {fields} }};")
    if methods:
        lines.append(
            f"action {', '.join(json.dumps(m) for m in methods)} appliesTo {{ "
            f"principal: [{', '.join(PRINCIPAL_TYPES)}], resource: [Route], "
            "context: RequestContext };"
        )
    return "\n".join(lines) + "\n"


@dataclass
class EdgePolicy:
    """The compiled edge policies: parsed and validated once, decisions cached."""

    text: str
    schema_text: str
    sources: tuple[str, ...] = ()
    _policies: Any = field(init=False, repr=False)
    _schema: Any = field(init=False, repr=False)
    _reads: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self._schema = cedarpy.Schema.from_str(self.schema_text)
        self._policies = cedarpy.PolicySet.from_str(self.text) if self.text.strip() else None
        self._reads = _context_reads(self.text) if self._policies is not None else frozenset()
        self._cache: dict[tuple[object, ...], EdgeDecision] = {}

    @property
    def context_reads(self) -> frozenset[str]:
        """The context fields some policy reads (what keys the decision cache)."""
        return self._reads

    def decide(self, request: EdgeRequest) -> EdgeDecision:
        key = (
            request.principal,
            request.method,
            request.route,
            *(_context_key(request, name) for name in self._reads),
        )
        decision = self._cache.get(key)
        if decision is None:
            decision = self._evaluate(request)
            if len(self._cache) >= _CACHE_SIZE:  # forget the oldest entry
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = decision
        return decision

    def _evaluate(self, request: EdgeRequest) -> EdgeDecision:
        if self._policies is None:
            return EdgeDecision(False, Reason.POLICY_DENY)
        principal = request.principal
        result = cedarpy.is_authorized(
            {
                "principal": {"type": principal.type, "id": principal.id},
                "action": {"type": "Action", "id": request.method},
                "resource": {"type": "Route", "id": request.route},
                "context": request.context(),
            },
            self._policies,
            [principal.entity()],
            self._schema,
        )
        names = result.diagnostics.id_annotations_by_reason
        ids = tuple(names.get(r, r) for r in result.diagnostics.reasons)
        if result.allowed:
            return EdgeDecision(True, Reason.POLICY_ALLOW, ids)
        errors = result.diagnostics.errors
        return EdgeDecision(False, Reason.POLICY_DENY, ids, "; ".join(errors) if errors else None)


def load_edge_policy(config: TrustmeshConfig, config_dir: Path) -> EdgePolicy | None:
    """Read, parse and validate ``gateway.policies``; ``None`` when none are declared.

    Raises :class:`ConfigError` naming the file and the policy for every problem."""
    gateway = config.gateway
    if gateway is None or not gateway.policies:
        return None
    schema_text = edge_schema(gateway)
    schema = cedarpy.Schema.from_str(schema_text)
    problems: list[str] = []
    texts: list[str] = []
    for index, name in enumerate(gateway.policies):
        where = f"gateway.policies[{index}]: {name}"
        path = config_dir / name
        try:
            with path.open("rb") as file:
                data = file.read(_MAX_POLICY_BYTES + 1)
        except OSError as exc:
            problems.append(f"{where}: cannot be read: {exc.strerror} (expected a .cedar file)")
            continue
        if len(data) > _MAX_POLICY_BYTES:
            problems.append(f"{where}: larger than {_MAX_POLICY_BYTES} bytes")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{where}: not UTF-8 text")
            continue
        problems.extend(f"{where}: {problem}" for problem in _check(text, schema, gateway))
        texts.append(text)
    if problems:
        raise ConfigError("\n".join(problems), problems=tuple(problems))
    return EdgePolicy("\n".join(texts), schema_text, tuple(gateway.policies))


def _check(text: str, schema: Any, gateway: GatewayConfig) -> Iterator[str]:
    try:
        cedarpy.PolicySet.from_str(text)
    except (ValueError, RuntimeError) as exc:
        yield f"does not parse: {' '.join(str(exc).split())} (expected Cedar policies)"
        return
    if not text.strip() or not json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]:
        yield "holds no policy (expected at least one permit)"
        return
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return
    routes = ", ".join(sorted({r.route_name for r in gateway.routes})) or "(none)"
    templates = ", ".join(sorted({t for r in gateway.routes for _, t in r.operations()}))
    for error in result.errors:
        message = " ".join(str(error).split())
        yield (
            f"{message} (expected routes {routes}; templates {templates or '(none)'}; actions "
            f"{', '.join(sorted({m for r in gateway.routes for m in r.methods}))}; "
            f"principal attributes {_PRINCIPAL_ATTRS}; context fields "
            f"{', '.join(CONTEXT_FIELDS)})"
        )


def _context_key(request: EdgeRequest, name: str) -> object:
    if name in ("hour", "weekday"):
        at = dt.datetime.fromtimestamp(request.time, dt.UTC)
        return at.hour if name == "hour" else at.isoweekday()
    value: object = getattr(request, name)
    return value


def _context_reads(text: str) -> frozenset[str]:
    """The ``context`` attributes the policies read (``context.x``, ``context has x``);
    a policy that uses ``context`` as a whole reads all of it."""
    found: set[str] = set()
    document = json.loads(cedarpy.policies_to_json_str(text))

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for op in (".", "has"):
                inner = node.get(op)
                if isinstance(inner, dict) and inner.get("left") == {"Var": "context"}:
                    found.add(str(inner.get("attr")))
                    walk({k: v for k, v in inner.items() if k != "left"})
                    return
            if node.get("Var") == "context":
                found.update(CONTEXT_FIELDS)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    if "hour" in found or "weekday" in found:
        found.add("hour")
        found.add("weekday")
    return frozenset(found)
