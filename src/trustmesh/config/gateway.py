"""The ``gateway:`` section of the declaration: the edge's listener and its routes.

A route sends requests for a host (optional) and a path prefix, with given methods, to a
declared service, after the authentication the route names; where it lists its
operations (``paths``: path templates, with or without a method) only those. Each route
also declares, implicitly, the calls ``gateway → service`` for its operations: nothing
about who may call whom is written twice.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Final, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from trustmesh.config.durations import Duration, format_duration
from trustmesh.config.listener import ListenerLimits
from trustmesh.config.patterns import PARAM_RE, path_problem

__all__ = [
    "AUTH_MODES",
    "PROVIDER_ISSUER",
    "RATE_LIMIT_KEYS",
    "CorsPolicy",
    "ExternalIssuer",
    "GatewayConfig",
    "GatewayRoute",
    "HealthCheck",
    "NginxSettings",
    "OutlierDetection",
    "RateLimitRule",
    "UpstreamSettings",
]

_MODEL_CONFIG: Final = ConfigDict(frozen=True, extra="forbid", strict=True)
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9._~-]+")
_HOST_RE: Final = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
_CLAIM_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TEMPLATE_EXPECTED: Final = (
    "'/path/{name}' or 'METHOD /path/{name}' under the route's path: literal segments "
    "([A-Za-z0-9._~-]), {name} placeholders of one segment, a final * (one or more), "
    "and a final '/' only where the path has one"
)
#: How a route authenticates: ``jwt`` (a bearer access token from the identity provider),
#: ``introspection`` (a bearer token, opaque or not, the provider vouches for when asked:
#: RFC 7662), ``api_key`` (a key made with ``trustmesh gateway key add``, scoped to
#: routes) or ``anonymous`` (no credential: the route says so explicitly).
AUTH_MODES: Final = ("jwt", "introspection", "api_key", "anonymous")
#: Claims the gateway itself sets in the internal token; a route cannot map them.
_RESERVED_CLAIMS: Final = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "jti", "act", "cnf", "client_id", "sub"}
)
MAX_INTERNAL_TOKEN_TTL: Final = timedelta(minutes=5)
#: A route's ``issuers`` entry for trustmesh's own identity provider.
PROVIDER_ISSUER: Final = "trustmesh"


def _invalid(problem: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError(
        "invalid", "{problem} (expected {expected})", {"problem": problem, "expected": expected}
    )


def _check_file_name(value: str) -> str:
    """A file the declaration names: relative to its folder, or absolute."""
    if not value or "\0" in value or len(value) > 4096:
        raise _invalid("not a file name", "a path, relative to the declaration's folder")
    return value


def _check_prefix(value: str) -> str:
    """A literal, canonical path prefix: ``/``, ``/orders``, ``/api/v1``."""
    if value == "/":
        return value
    if not value.startswith("/") or value.endswith("/"):
        raise _invalid(
            f"{value!r} is not a path prefix", "'/' or '/segment[/segment…]', no '/' at the end"
        )
    for segment in value[1:].split("/"):
        if segment in ("", ".", "..") or _SEGMENT_RE.fullmatch(segment) is None:
            raise _invalid(
                f"{value!r} has the segment {segment!r}",
                "literal segments of letters, digits and . _ ~ - (no placeholders)",
            )
    return value


def _split_operation(value: str) -> tuple[str, str]:
    """``("", "/orders/{id}")`` or ``("POST", "/orders/{id}/refund")``: an entry of a
    route's ``paths``, without or with its method."""
    method, sep, template = value.partition(" ")
    if not sep or method.startswith("/"):
        return "", value
    return method, template


def _check_template(value: str) -> str:
    """``/orders/{id}`` or ``POST /orders/{id}/refund``: an operation of a route."""
    method, template = _split_operation(value)
    if method and method not in _METHODS:
        raise _invalid(f"{value!r} names the method {method!r}", ", ".join(_METHODS))
    problem = path_problem(template, trailing_slash=True)
    if problem is not None:
        raise _invalid(problem, _TEMPLATE_EXPECTED)
    return value


def _shape(template: str) -> str:
    """A template with its placeholders unnamed: two templates of one shape match the
    very same paths."""
    return PARAM_RE.sub("{}", template)


def _check_host(value: str) -> str:
    if _HOST_RE.fullmatch(value) is None:
        raise _invalid(f"{value!r} is not a host name", "a lower-case DNS name, without a port")
    return value


def _check_claim(value: str) -> str:
    if _CLAIM_RE.fullmatch(value) is None or value in _RESERVED_CLAIMS:
        raise _invalid(
            f"{value!r} cannot be mapped",
            "a lower-case claim name other than " + ", ".join(sorted(_RESERVED_CLAIMS)),
        )
    return value


def _check_cidr(value: str) -> str:
    try:
        if "%" in value:  # a zone index names an interface, never a client (RFC 4007 §11)
            raise ValueError("has a zone index")
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise _invalid(f"{value!r}: {exc}", "a CIDR block such as 10.0.0.0/8 or ::1/128") from None
    return value


def _check_timeout(value: timedelta) -> timedelta:
    if value > timedelta(minutes=10):
        raise _invalid(f"{format_duration(value)} is over 10m", "a timeout of 1s .. 10m")
    return value


def _check_token_ttl(value: timedelta) -> timedelta:
    if not timedelta(seconds=5) <= value <= MAX_INTERNAL_TOKEN_TTL:
        raise _invalid(
            f"{format_duration(value)} is outside 5s .. {format_duration(MAX_INTERNAL_TOKEN_TTL)}",
            "a short lifetime: the token is minted per request",
        )
    return value


Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_METHODS: Final = get_args(Method)
#: What a rate limit counts by: the consumer (token subject, API key or client), each of
#: the consumer's roles, the route as a whole, or the client address.
RATE_LIMIT_KEYS: Final = ("consumer", "role", "route", "ip")
RateLimitKey = Literal["consumer", "role", "route", "ip"]
_RATE_RE: Final = re.compile(
    r"([1-9][0-9]{0,8})\s*(?:/|per)\s*([1-9][0-9]{0,4}\s+)?(second|minute|hour|day)s?"
)
_ROUTE_NAME_RE: Final = re.compile(r"[A-Za-z0-9._~/-]{1,128}")


def _check_rate(value: str) -> str:
    if _RATE_RE.fullmatch(value.strip()) is None:
        raise _invalid(
            f"{value!r} is not a rate",
            "'N/second', 'N/minute', 'N/hour', 'N/day' or 'N per M minutes'",
        )
    return value.strip()


def _check_route_name(value: str) -> str:
    if _ROUTE_NAME_RE.fullmatch(value) is None:
        raise _invalid(f"{value!r} is not a route name", "letters, digits and . _ ~ / -")
    return value


class RateLimitRule(BaseModel):
    """At most ``limit`` requests per window for each value of ``per``; counted with a
    moving window (exact) or a sliding window counter (cheaper, approximate)."""

    model_config = _MODEL_CONFIG

    per: RateLimitKey = Field(description="consumer | role | route | ip")
    limit: Annotated[str, AfterValidator(_check_rate)] = Field(
        description="Such as '100/minute' or '10 per 5 seconds'."
    )
    window: Literal["moving", "sliding"] = Field(default="moving")
    roles: list[str] | None = Field(
        default=None, description="Only for consumers holding one of these roles (unset: all)."
    )


AuthMode = Literal["jwt", "introspection", "api_key", "anonymous"]


_ORIGIN_RE: Final = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|\*")
_HEADER_RE: Final = re.compile(r"[a-z0-9-]{1,64}")


def _check_origin(value: str) -> str:
    if _ORIGIN_RE.fullmatch(value) is None:
        raise _invalid(f"{value!r} is not an origin", "scheme://host[:port] in lower case, or '*'")
    return value


def _check_header_name(value: str) -> str:
    if _HEADER_RE.fullmatch(value) is None:
        raise _invalid(f"{value!r} is not a header name", "a lower-case header name")
    return value


class CorsPolicy(BaseModel):
    """Which web origins may call a route from a browser (the Fetch standard's CORS)."""

    model_config = _MODEL_CONFIG

    origins: list[Annotated[str, AfterValidator(_check_origin)]] = Field(min_length=1)
    headers: list[Annotated[str, AfterValidator(_check_header_name)]] = Field(
        default_factory=lambda: ["authorization", "content-type"],
        description="Request headers a page may send.",
    )
    max_age: int = Field(default=600, ge=0, le=86400, description="Preflight cache, seconds.")
    credentials: bool = Field(default=False, description="Allow cookies / credentials.")

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsPolicy:
        if self.credentials and "*" in self.origins:
            raise _invalid(
                "'*' with credentials would let any site act as the user",
                "the exact origins, when credentials are allowed",
            )
        return self


def _only_get() -> list[Method]:
    return ["GET"]


def _jwt_only() -> list[AuthMode]:
    return ["jwt"]


class GatewayRoute(BaseModel):
    """Requests for ``host`` (any, if unset) under ``path`` with one of ``methods`` go to
    service ``to``, after ``auth``. The longest matching prefix wins; where the route
    lists ``paths``, the request must be one of those operations."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_by_name=True)

    path: Annotated[str, AfterValidator(_check_prefix)] = Field(
        description="Path prefix: '/orders' matches /orders and /orders/…, never /ordersX."
    )
    to: str = Field(description="The declared service that serves the route.")
    methods: list[Method] = Field(default_factory=_only_get, min_length=1)
    paths: list[Annotated[str, AfterValidator(_check_template)]] | None = Field(
        default=None,
        min_length=1,
        description="The operations the route serves: path templates under 'path' "
        "('/orders/{id}': literal segments, {name} placeholders of one segment, a final *), "
        "each for all the route's methods or for one ('POST /orders/{id}/refund'). Set: a "
        "request must match one exactly (else 404; a trailing '/' only where a template "
        "ends in one), the policies see the template and its values (context.template, "
        "context.params) and the service gets only these calls from the gateway. Unset: "
        "every path under the prefix, none with a trailing '/'.",
    )
    host: Annotated[str, AfterValidator(_check_host)] | None = Field(
        default=None, description="Only requests for this Host (without port)."
    )
    auth: list[AuthMode] = Field(
        default_factory=_jwt_only,
        min_length=1,
        description="jwt: a bearer access token verified with its issuer's keys; "
        "introspection: a bearer token the identity provider vouches for when asked (RFC "
        "7662; 503 while it is down); api_key: a gateway API key scoped to this route; "
        "anonymous: none needed (say so explicitly).",
    )
    claims: list[Annotated[str, AfterValidator(_check_claim)]] = Field(
        default_factory=lambda: ["roles"],
        description="User claims copied into the internal token (sub always is).",
    )
    allow_ips: list[Annotated[str, AfterValidator(_check_cidr)]] | None = Field(
        default=None,
        description="Only clients in these CIDR blocks (after the gateway-wide lists).",
    )
    deny_ips: list[Annotated[str, AfterValidator(_check_cidr)]] = Field(
        default_factory=list, description="Clients in these CIDR blocks are refused."
    )
    cors: CorsPolicy | None = Field(default=None, description="Browser access from other origins.")
    request_headers: list[Annotated[str, AfterValidator(_check_header_name)]] | None = Field(
        default=None,
        description="Strict mode: only these request headers (lower-case names) reach the "
        "service, besides those the gateway sets (authorization: its internal token, "
        "traceparent, x-forwarded-for, x-forwarded-proto). Unset: every header but the "
        "hop-by-hop ones and those the gateway strips from every request (identities, "
        "certificates, addresses, other URLs or methods: see trustmesh.gateway.headers), "
        "which no route can let through.",
    )
    relay_errors: bool = Field(
        default=False,
        description="Relay the service's own answer when it refuses or fails a request "
        "(status ≥ 400), body and all. Off: the gateway answers that status in its own "
        'shape ({"error", "message"}), keeping only the headers a client needs (Allow, '
        "WWW-Authenticate, Retry-After, RateLimit…): nothing of a framework's or a stack "
        "trace's body reaches the client.",
    )
    name: Annotated[str, AfterValidator(_check_route_name)] | None = Field(
        default=None,
        description='The route\'s Cedar id (Route::"<name>"); default: the path prefix, '
        "after the host when one is set.",
    )
    rate_limits: list[RateLimitRule] = Field(default_factory=list)
    issuers: list[str] | None = Field(
        default=None,
        description="Whose tokens a jwt route takes: 'trustmesh' (the identity provider) "
        "and/or issuers of gateway.issuers (unset: all of them).",
    )
    timeout: Annotated[Duration, AfterValidator(_check_timeout)] = Field(
        default="30s",
        validate_default=True,
        description="How long the upstream may take to answer (then 504).",
    )
    waf: WafConfig | None = Field(
        default=None, description="The injection filter for this route (default: gateway.waf)."
    )
    modes: ControlModes = Field(
        default_factory=lambda: ControlModes(),
        description="enforce or dry-run, per control: policy, rate_limits, validation, waf.",
    )
    openapi: Annotated[str, AfterValidator(_check_file_name)] | None = Field(
        default=None,
        description="An OpenAPI 3.0 or 3.1 document (JSON or YAML; relative to the "
        "declaration's folder) describing every operation of the route (list them in "
        "paths): path, query and header parameters, the content type (415) and the body "
        "are validated against it before the request is forwarded (400, naming where and "
        "the rule that failed).",
    )
    schema_file: Annotated[str, AfterValidator(_check_file_name)] | None = Field(
        default=None,
        alias="schema",
        description="A JSON Schema (JSON or YAML file, relative to the declaration's "
        "folder) for the route's bodies: POST, PUT and PATCH must carry a JSON body valid "
        "against it (415 for another content type, 400 when invalid); other methods none.",
    )

    @property
    def route_name(self) -> str:
        if self.name is not None:
            return self.name
        return f"{self.host}{self.path}" if self.host else self.path

    @model_validator(mode="after")
    def _consistent(self) -> GatewayRoute:
        if len(set(self.methods)) != len(self.methods):
            raise _invalid("methods repeat", "each method once")
        if "anonymous" in self.auth and len(self.auth) > 1:
            raise _invalid(
                "auth mixes anonymous with a credential",
                "either [anonymous] or the credentials the route accepts",
            )
        self._check_paths()
        if self.openapi is not None and self.schema_file is not None:
            raise _invalid("both openapi and schema", "one of them: a route has one contract")
        return self

    def _check_paths(self) -> None:
        """Each operation under the prefix, for a method of the route, once; no two
        templates of one shape."""
        shapes: dict[str, str] = {}
        for index, entry in enumerate(self.paths or ()):
            method, template = _split_operation(entry)
            if method and method not in self.methods:
                raise _invalid(
                    f"paths[{index}] names {method}, not a method of the route",
                    "one of " + ", ".join(self.methods),
                )
            prefix = self.path
            if not (prefix == "/" or template == prefix or template.startswith(prefix + "/")):
                raise _invalid(
                    f"paths[{index}] {template!r} is not under the route's path {prefix!r}",
                    _TEMPLATE_EXPECTED,
                )
            other = shapes.setdefault(_shape(template), template)
            if other != template:
                raise _invalid(
                    f"paths[{index}] {template!r} matches the very paths {other!r} does",
                    "each template once, its placeholders named alike",
                )
        operations = self._declared()
        if len(set(operations)) != len(operations):
            raise _invalid("paths repeat an operation", "each method and template once")

    def _declared(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for entry in self.paths or ():
            method, template = _split_operation(entry)
            out.extend((m, template) for m in ([method] if method else self.methods))
        return out

    def operations(self) -> tuple[tuple[str, str], ...]:
        """(method, path template) of each operation the route serves: its ``paths``, or
        when unset its prefix and every path under it (``/orders``, ``/orders/*``). These
        are also the calls ``gateway → to`` the declaration implies."""
        if self.paths is not None:
            return tuple(self._declared())
        patterns = ("/", "/*") if self.path == "/" else (self.path, self.path + "/*")
        return tuple((method, pattern) for method in self.methods for pattern in patterns)


ControlMode = Literal["enforce", "dry-run"]


class ControlModes(BaseModel):
    """Each control of a route enforces (refuses) or runs dry: the request passes and
    what the control would have refused is an event (decision ``would-deny``, its
    reason), read by ``trustmesh gateway dry-run report``. Switch a control on in
    dry-run, read the report, then enforce it (a reload applies it)."""

    model_config = _MODEL_CONFIG

    policy: ControlMode = Field(default="enforce", description="The edge policies (Cedar).")
    rate_limits: ControlMode = Field(default="enforce", description="The rate limits.")
    validation: ControlMode = Field(
        default="enforce", description="The route's contract (openapi or schema)."
    )
    waf: ControlMode = Field(default="enforce", description="The injection filter.")


class WafConfig(BaseModel):
    """The injection filter: SQL injection, XSS, path traversal and command injection in
    the path, query, headers and body, in one of two modes — ``fast``
    (:mod:`trustmesh.gateway.waf`) or ``crs`` (:mod:`trustmesh.gateway.crs`: the OWASP
    Core Rule Set on libmodsecurity, with its anomaly scoring)."""

    model_config = _MODEL_CONFIG

    mode: Literal["fast", "crs", "off"] = Field(
        default="fast",
        description="fast: libinjection and high-signal traversal and command checks; "
        "crs: the OWASP Core Rule Set 3.3 on libmodsecurity (≈ 0.5–3 ms a request); off: none.",
    )
    action: Literal["block", "log"] = Field(
        default="block",
        description="block: 403 request-injection; log: the request passes and the finding "
        "is a would-deny event (the same as the route's modes.waf: dry-run).",
    )
    paranoia: int = Field(
        default=1,
        ge=1,
        le=4,
        description="crs: the CRS paranoia level (more rules, more false positives).",
    )
    threshold: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="crs: the inbound anomaly score that refuses (5: one critical rule).",
    )
    max_body: int = Field(
        default=32 << 10,
        ge=1024,
        le=64 << 20,
        description="crs: the largest body the rules inspect; a larger one is refused (413): "
        "some CRS patterns cost more than linear time on long inputs (≈ 0.1 s at 32 KiB).",
    )
    crs_rules: str | None = Field(
        default=None,
        description="crs: the directory of the CRS's REQUEST-9*.conf files "
        "(default /usr/share/modsecurity-crs/rules, Debian's modsecurity-crs).",
    )

    @model_validator(mode="after")
    def _crs_settings_need_crs(self) -> WafConfig:
        if self.mode != "crs" and self.model_fields_set & {
            "paranoia",
            "threshold",
            "max_body",
            "crs_rules",
        }:
            raise ValueError("paranoia, threshold, max_body and crs_rules apply to mode crs only")
        return self


class JsonLimits(BaseModel):
    """Bounds on a JSON body the gateway parses (a route with ``openapi`` or
    ``schema``); duplicate keys, NaN and Infinity are refused whatever these say."""

    model_config = _MODEL_CONFIG

    max_depth: int = Field(default=32, ge=1, le=256, description="Nested objects and arrays.")
    max_keys: int = Field(default=1000, ge=1, le=100_000, description="Keys of one object.")
    max_items: int = Field(default=10_000, ge=1, le=1_000_000, description="Items of one array.")
    max_string: int = Field(
        default=65_536, ge=1, le=64 << 20, description="Characters of one string or key."
    )
    max_number_digits: int = Field(
        default=64, ge=1, le=4000, description="Characters of one number's text."
    )


class HealthCheck(BaseModel):
    """Active health checks: ``GET path`` on each instance every ``interval`` over mTLS."""

    model_config = _MODEL_CONFIG

    path: Annotated[str, AfterValidator(_check_prefix)] = Field(
        default="/.well-known/trustmesh/health",
        description="Answered by the SDK middleware to mTLS peers of the trust domain.",
    )
    interval: Duration = Field(default="5s", validate_default=True)
    timeout: Duration = Field(default="2s", validate_default=True)
    unhealthy_after: int = Field(default=2, ge=1, le=100, description="Failures in a row.")
    healthy_after: int = Field(default=1, ge=1, le=100, description="Successes in a row.")


class OutlierDetection(BaseModel):
    """Passive outlier ejection: an instance that fails ``consecutive_failures`` requests in
    a row (connection errors, timeouts, 5xx) is ejected for ``ejection``, longer each time
    (the circuit opens), at most ``max_ejected_percent`` of a pool at once."""

    model_config = _MODEL_CONFIG

    consecutive_failures: int = Field(default=5, ge=1, le=1000)
    ejection: Duration = Field(default="30s", validate_default=True)
    max_ejection: Duration = Field(default="5m", validate_default=True)
    max_ejected_percent: int = Field(default=50, ge=0, le=100)


class UpstreamSettings(BaseModel):
    """How the gateway spreads requests over a service's instances."""

    model_config = _MODEL_CONFIG

    balance: Literal["round_robin", "least_requests"] = Field(default="least_requests")
    retries: int = Field(
        default=1, ge=0, le=5, description="Retries of idempotent methods on another instance."
    )
    health_check: HealthCheck | None = Field(default_factory=lambda: HealthCheck())
    outlier: OutlierDetection = Field(default_factory=lambda: OutlierDetection())


_ISSUER_RE: Final = re.compile(
    r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?"
)
_CLAIM_PATH_RE: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,3}"
)
ExternalAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"
]


def _check_issuer(value: str) -> str:
    if _ISSUER_RE.fullmatch(value) is None or "?" in value or "#" in value:
        raise _invalid(
            f"{value!r} is not an issuer URL",
            "https://host[:port][/path], with no query or fragment (OIDC Discovery §2)",
        )
    return value


def _common_algorithms() -> list[ExternalAlgorithm]:
    return ["RS256", "ES256"]


def _check_claim_path(value: str) -> str:
    if _CLAIM_PATH_RE.fullmatch(value) is None:
        raise _invalid(f"{value!r} is not a claim path", "a claim name, or a dotted path")
    return value


def _check_name(value: str) -> str:
    if not value or len(value) > 256 or not value.isprintable():
        raise _invalid(f"{value!r} is not a name", "1 to 256 printable characters")
    return value


class ExternalIssuer(BaseModel):
    """Another OpenID Provider whose access tokens the gateway accepts on ``jwt`` routes,
    found through OpenID Connect Discovery and verified with its JWKS.

    Its tokens never speak for a local user: every name in them is namespaced
    (``<issuer>#<value>``), and what they say beyond that — roles, groups, scopes, the
    way the user signed in, whether the subject is a user at all — counts only where this
    declaration says so."""

    model_config = _MODEL_CONFIG

    issuer: Annotated[str, AfterValidator(_check_issuer)] = Field(
        description="The issuer identifier, exactly as in its tokens' iss claim."
    )
    audience: str = Field(min_length=1, max_length=256, description="The aud tokens must name.")
    algorithms: list[ExternalAlgorithm] = Field(
        default_factory=_common_algorithms,
        min_length=1,
        description="Signature algorithms accepted (never none or HMAC).",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM bundle that verifies the issuer's TLS certificate (relative to this "
        "file); default: the system's trust store.",
    )
    roles_claim: Annotated[str, AfterValidator(_check_claim_path)] = Field(
        default="roles",
        description="Where the user's roles are (a dotted path, e.g. realm_access.roles).",
    )
    roles: list[str] | None = Field(
        default=None,
        description="The roles taken from this issuer's tokens, of auth.roles (unset: every "
        "declared role but admin; list admin to let this issuer's admins in).",
    )
    principal: Literal["client", "user"] = Field(
        default="client",
        description="What this issuer's tokens name in the edge policies: Client (default) or "
        "User — decided here, never by claims the issuer writes (preferred_username, "
        "auth_time).",
    )
    trust_amr: bool = Field(
        default=False,
        description="Believe this issuer's amr claim (RFC 8176): the principal's amr, and mfa "
        "when it holds otp, mfa, hwk or swk. Default: amr empty, mfa false.",
    )
    groups_claim: Annotated[str, AfterValidator(_check_claim_path)] = Field(
        default="groups", description="Where the user's groups are (a dotted path)."
    )
    groups: list[Annotated[str, AfterValidator(_check_name)]] = Field(
        default_factory=list,
        description="The groups taken from this issuer's tokens, as written (default: none).",
    )
    scopes: list[Annotated[str, AfterValidator(_check_name)]] = Field(
        default_factory=list,
        description="The scopes taken from this issuer's tokens' scope claim (default: none).",
    )


def _check_decision_ttl(value: timedelta) -> timedelta:
    if value > timedelta(seconds=60):
        raise _invalid(
            f"{format_duration(value)} is more than 60s",
            "a short time: it bounds how late a revocation lands",
        )
    return value


class NginxSettings(BaseModel):
    """``engine: nginx``: nginx forwards, trustmesh decides (``auth_request`` to the
    gateway's authorizer on a private socket) and runs nginx (its configuration rendered
    from this declaration, its SVID rotated by a graceful reload)."""

    model_config = _MODEL_CONFIG

    binary: str = Field(default="nginx", description="The nginx executable (a path or on PATH).")
    workers: int = Field(default=1, ge=1, le=64, description="nginx worker processes.")
    decision_ttl: Annotated[Duration, AfterValidator(_check_decision_ttl)] | None = Field(
        default=None,
        description="How long nginx keeps an allowed decision (per credential, method, URI, "
        "host and client address) and asks the authorizer nothing more (unset: it asks "
        "about every request). It bounds how late a revoked token, a blocked address or a "
        "new policy reaches requests already allowed (at most 60s); what nginx answers "
        "itself is recorded from its log, each second.",
    )


#: What a route may not declare where nginx forwards: nginx asks the authorizer about the
#: request's head only, so nothing that reads the body can run.
_NGINX_UNSUPPORTED: Final = (
    ("openapi", "openapi", "a request contract reads the body"),
    ("schema_file", "schema", "a request contract reads the body"),
)


def _check_caller(value: str) -> str:
    if not value.startswith("spiffe://") or "/" not in value[len("spiffe://") :]:
        raise _invalid(f"{value!r} is not a workload's SPIFFE ID", "spiffe://<domain>/<path>")
    return value


class ExtAuthzSettings(BaseModel):
    """The gateway's decisions for a proxy in front of it over gRPC (Envoy's ``ext_authz``
    with a ``grpc_service``: ``envoy.service.auth.v3.Authorization/Check``), on a listener
    of its own over mTLS with the gateway's SVID, to the declared callers only."""

    model_config = _MODEL_CONFIG

    port: int = Field(
        default=0, ge=0, le=65535, description="Port on listen.host (mTLS); 0 picks one."
    )
    callers: list[Annotated[str, AfterValidator(_check_caller)]] = Field(
        min_length=1, description="The SPIFFE IDs of the proxies that may ask (Envoy's SVID)."
    )


class GatewayConfig(BaseModel):
    """The edge: a TLS listener for clients, and where each request goes."""

    model_config = _MODEL_CONFIG

    engine: Literal["python", "nginx"] = Field(
        default="python",
        description="python: the gateway serves the edge itself; nginx: nginx serves it "
        "and asks the gateway's authorizer about every request's head (nothing that reads "
        "a body: no contract, the injection filter off).",
    )
    nginx: NginxSettings = Field(default_factory=lambda: NginxSettings())
    ext_authz: ExtAuthzSettings | None = Field(
        default=None,
        description="Serve the gateway's decisions over gRPC to a proxy in front of it "
        "(Envoy's ext_authz; unset: not served).",
    )

    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the client listener on listen.host; 0 picks one.",
    )
    internal_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the gateway's mTLS listener on listen.host (its internal "
        "tokens' JWKS for the services, the admin API); 0 picks one.",
    )
    tls_cert: str | None = Field(
        default=None,
        description="PEM certificate chain, relative to this file (required outside dev "
        "mode; dev mode issues one from the local edge CA).",
    )
    tls_key: str | None = Field(default=None, description="PEM private key of tls_cert.")
    internal_token_ttl: Annotated[Duration, AfterValidator(_check_token_ttl)] = Field(
        default="60s",
        validate_default=True,
        description="Lifetime of the token the gateway signs for the upstream (≤ 5m).",
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1, le=64 << 20, description="Larger request bodies get 413."
    )
    waf: WafConfig = Field(
        default_factory=lambda: WafConfig(),
        description="The injection filter of every route that sets none of its own.",
    )
    crs_workers: int = Field(
        default=2,
        ge=0,
        le=32,
        description="Processes that run the injection filter's crs mode, off the event "
        "loop (ModSecurity holds the interpreter while it inspects); 0: inspect in the "
        "gateway's own process, every other request waiting meanwhile. Read at start.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Gateway processes `trustmesh up` runs (engine: python), all on the "
        "client listener's port (SO_REUSEPORT): the kernel spreads connections over them. "
        "Each has its own SVID, event spool and mTLS listener; the first serves the admin "
        "API and the internal tokens' JWKS at internal_port. Rate limits are shared through "
        "redis (required with limits when more than one).",
    )
    json_limits: JsonLimits = Field(
        default_factory=lambda: JsonLimits(),
        description="How much JSON a validated route's body may hold (400 past any).",
    )
    trusted_proxies: list[Annotated[str, AfterValidator(_check_cidr)]] = Field(
        default_factory=list,
        description="Hops whose X-Forwarded-For is believed (CIDR); none by default.",
    )
    allow_ips: list[Annotated[str, AfterValidator(_check_cidr)]] | None = Field(
        default=None,
        description="Only clients in these CIDR blocks may use the gateway (unset: anyone).",
    )
    deny_ips: list[Annotated[str, AfterValidator(_check_cidr)]] = Field(
        default_factory=list, description="Clients in these CIDR blocks are refused (403)."
    )
    policies: list[str] = Field(
        default_factory=list,
        description="Cedar policy files (relative to this file) deciding every request at the "
        "edge, validated against the schema generated from this declaration; default deny. "
        "Unset: a route admits whoever passes its authentication.",
    )
    rate_limits: list[RateLimitRule] = Field(
        default_factory=list, description="Limits over every route (each route adds its own)."
    )
    redis: str | None = Field(
        default=None,
        description="redis:// URL where gateway replicas share rate-limit counters (unset: "
        "in memory). When it is unreachable each gateway limits on its own and says so.",
    )
    issuers: list[ExternalIssuer] = Field(
        default_factory=list,
        description="Other OpenID Providers whose access tokens jwt routes accept.",
    )
    upstream: UpstreamSettings = Field(default_factory=lambda: UpstreamSettings())
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Loopback port of the Prometheus /metrics listener (0 picks one; unset: none).",
    )
    limits: ListenerLimits = Field(
        default_factory=lambda: ListenerLimits(),
        description="Connections, request-head sizes and timeouts of the client listener.",
    )
    routes: list[GatewayRoute] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct(self) -> GatewayConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _invalid("tls_cert and tls_key go together", "both files, or neither")
        if self.port != 0 and self.port == self.internal_port:
            raise _invalid(
                f"port and internal_port are both {self.port}", "a different port for each"
            )
        names: dict[str, tuple[str | None, str]] = {}
        for index, route in enumerate(self.routes):
            where = (route.host, route.path)
            if names.setdefault(route.route_name, where) != where:
                raise _invalid(
                    f"routes[{index}] is named {route.route_name!r} like another route",
                    "a distinct name for each host and path prefix",
                )
        issuers = [i.issuer for i in self.issuers]
        if len(set(issuers)) != len(issuers):
            raise _invalid("issuers repeat", "each issuer once")
        known = {PROVIDER_ISSUER, *issuers}
        for index, route in enumerate(self.routes):
            for name in route.issuers or ():
                if name not in known:
                    raise _invalid(
                        f"routes[{index}].issuers names {name!r}",
                        "'trustmesh' or an issuer of gateway.issuers: " + ", ".join(sorted(known)),
                    )
        if self.engine == "nginx":
            self._check_nginx()
        if self.workers > 1:
            self._check_workers()
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://")):
            raise _invalid("gateway.redis is not a redis:// URL", "redis://host:port/db")
        seen: dict[tuple[str | None, str, str], int] = {}
        for index, route in enumerate(self.routes):
            for method in route.methods:
                key = (route.host, route.path, method)
                if key in seen:
                    raise _invalid(
                        f"routes[{index}] repeats {method} {route.path} of routes[{seen[key]}]"
                        + (f" for host {route.host}" if route.host else ""),
                        "one route per host, path prefix and method",
                    )
                seen[key] = index
        return self

    def _check_workers(self) -> None:
        """Several processes on one port: each counts what it sees unless they share."""
        if self.engine != "python":
            raise _invalid(
                "workers is the Python engine's processes", "nginx.workers for engine: nginx"
            )
        limited = bool(self.rate_limits) or any(r.rate_limits for r in self.routes)
        if limited and self.redis is None:
            raise _invalid(
                f"{self.workers} workers would each admit the whole rate limit",
                "gateway.redis (or shared.redis), where the workers share their counters",
            )

    def _check_nginx(self) -> None:
        """Refuse what nginx cannot enforce, rather than serve it unchecked."""
        for index, route in enumerate(self.routes):
            for attribute, key, why in _NGINX_UNSUPPORTED:
                if getattr(route, attribute) is not None:
                    raise _invalid(
                        f"routes[{index}].{key}: {why}", "engine: python for this declaration"
                    )
            if (route.waf or self.waf).mode != "off":
                raise _invalid(
                    f"routes[{index}]: the injection filter reads bodies and nginx forwards "
                    "them unread",
                    "waf: {mode: 'off'} (gateway-wide or on the route), or engine: python",
                )
            if route.relay_errors:
                raise _invalid(
                    f"routes[{index}].relay_errors: nginx answers errors in the gateway's shape",
                    "relay_errors: false, or engine: python",
                )
