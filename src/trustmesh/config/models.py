"""The declaration (``trustmesh.yaml``) as frozen pydantic models.

Validation errors raised here carry ``ctx["problem"]`` and ``ctx["expected"]`` so that the
loader can print ``<file>:<line>: <key.path>: <problem> (expected <expected>)``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from trustmesh.config.audit import AuditConfig, DetectionConfig
from trustmesh.config.durations import Duration, format_duration
from trustmesh.config.gateway import GatewayConfig
from trustmesh.config.listen import DEV_EXPECTED, ListenSettings, dev_bind_problem
from trustmesh.config.listener import ListenerLimits
from trustmesh.config.patterns import path_problem
from trustmesh.config.runtime import RuntimeProfile
from trustmesh.config.secrets import SecretsConfig
from trustmesh.config.shared import SharedState
from trustmesh.config.switches import DEFENCES, SwitchesConfig
from trustmesh.errors import NotFoundError, UsageError

__all__ = [
    "ALLOW_EXPECTED",
    "HARD_MAX_SVID_TTL",
    "HTTP_METHODS",
    "MAX_ACCESS_TOKEN_TTL",
    "MAX_TOKEN_LEEWAY",
    "MIN_TTL",
    "RESERVED_SERVICE_NAMES",
    "SERVICE_NAME_EXPECTED",
    "TRUST_DOMAIN_EXPECTED",
    "AllowRule",
    "CallSpec",
    "IdentitySettings",
    "ServiceSpec",
    "TrustmeshConfig",
    "parse_allow_rule",
]

HARD_MAX_SVID_TTL: Final = timedelta(days=7)
MAX_ACCESS_TOKEN_TTL: Final = timedelta(hours=1)
#: The most clock difference a token verifier may be told to forgive (auth.token_leeway).
MAX_TOKEN_LEEWAY: Final = timedelta(seconds=30)
MIN_TTL: Final = timedelta(seconds=10)
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"})
#: "trustmesh-console" is the console's OAuth client at the provider (a service's client
#: is named after the service).
RESERVED_SERVICE_NAMES: Final = frozenset({"trustmesh", "trustmesh-console"})

_MODEL_CONFIG: Final = ConfigDict(frozen=True, extra="forbid", strict=True)
_SERVICE_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_TRUST_DOMAIN_RE: Final = re.compile(r"[a-z0-9._-]{1,255}")
_RUN_RE: Final = re.compile(
    r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.A
)

TRUST_DOMAIN_EXPECTED: Final = (
    "a SPIFFE trust domain name: lowercase letters, digits, '.', '-' and '_', "
    "no scheme or port, such as 'shop.example'"
)
SERVICE_NAME_EXPECTED: Final = (
    "a lowercase name matching ^[a-z][a-z0-9-]{0,62}$ other than 'trustmesh'"
)
ALLOW_EXPECTED: Final = (
    '"METHOD /path" with METHOD one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or *, '
    "and path segments that are literals ([A-Za-z0-9._~-]), {param} placeholders or a final *, "
    'such as "GET /items/{id}"'
)


def _problem(kind: str, problem: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError(
        kind, "{problem} (expected {expected})", {"problem": problem, "expected": expected}
    )


class _Problems:
    """Collects ``(loc, input, problem, expected)`` and raises them as one ValidationError."""

    def __init__(self) -> None:
        self._errors: list[InitErrorDetails] = []

    def add(self, loc: tuple[str | int, ...], value: Any, problem: str, expected: str) -> None:
        self._errors.append(
            InitErrorDetails(type=_problem("invalid", problem, expected), loc=loc, input=value)
        )

    def raise_if_any(self, title: str) -> None:
        if self._errors:
            raise ValidationError.from_exception_data(title, self._errors)


# --- trust domain and names -------------------------------------------------------------


def _trust_domain_problem(value: str) -> str | None:
    """What is wrong with a trust domain name (SPIFFE-ID §2.1), or None."""
    if not value:
        return "is empty"
    if len(value) > 255:
        return f"is {len(value)} characters long, more than 255"
    if "://" in value:
        return f"{value!r} includes a URL scheme"
    if ":" in value:
        return f"{value!r} includes a port"
    if value != value.lower():
        return f"{value!r} contains uppercase letters"
    if value.startswith(".") or value.endswith("."):
        return f"{value!r} starts or ends with a dot"
    if ".." in value:
        return f"{value!r} has an empty label"
    if _TRUST_DOMAIN_RE.fullmatch(value) is None:
        bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._-"))})
        return f"{value!r} contains characters that are not allowed: {', '.join(map(repr, bad))}"
    return None


def _check_trust_domain(value: str) -> str:
    problem = _trust_domain_problem(value)
    if problem is not None:
        raise _problem("trust_domain", problem, TRUST_DOMAIN_EXPECTED)
    return value


def _check_service_name(value: str) -> str:
    if value in RESERVED_SERVICE_NAMES:
        raise _problem(
            "service_name",
            f"{value!r} is reserved for trustmesh's own components",
            SERVICE_NAME_EXPECTED,
        )
    if _SERVICE_NAME_RE.fullmatch(value) is None:
        raise _problem(
            "service_name", f"{value!r} is not a valid service name", SERVICE_NAME_EXPECTED
        )
    return value


def _check_run(value: str) -> str:
    if _RUN_RE.fullmatch(value) is None:
        raise _problem(
            "run", f"{value!r} is not an ASGI import string", "'package.module:attribute'"
        )
    return value


def _check_command(value: list[str]) -> list[str]:
    expected = "a non-empty argv list, such as ['python', '-m', 'myservice']"
    if not value or not value[0]:
        raise _problem("command", "command is empty", expected)
    if any("\x00" in arg for arg in value):
        raise _problem("command", "command contains a NUL character", expected)
    return value


def _check_port(value: int) -> int:
    if not 1024 <= value <= 65535:
        raise _problem("port", f"port {value} is out of range", "an integer from 1024 to 65535")
    return value


_ROLE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _check_role(value: str) -> str:
    if _ROLE_RE.fullmatch(value) is None:
        raise _problem(
            "role", f"{value!r} is not a role name", "a lower-case name of at most 32 characters"
        )
    return value


def _check_ttl(value: timedelta) -> timedelta:
    if value < MIN_TTL:
        raise _problem(
            "ttl", f"{format_duration(value)} is too short", f"at least {format_duration(MIN_TTL)}"
        )
    return value


ServiceName = Annotated[
    str,
    AfterValidator(_check_service_name),
    WithJsonSchema(
        {
            "type": "string",
            "allOf": [{"pattern": "^[a-z][a-z0-9-]{0,62}$"}, {"not": {"const": "trustmesh"}}],
        }
    ),
]
Ttl = Annotated[Duration, AfterValidator(_check_ttl)]


# --- allow rules --------------------------------------------------------------------------


class AllowRule(BaseModel):
    """One parsed ``"METHOD /path/{param}/*"`` item of a call's ``allow`` list."""

    model_config = _MODEL_CONFIG

    method: str
    pattern: str
    segments: tuple[str, ...]


def parse_allow_rule(text: str) -> AllowRule:
    """Parse ``"GET /items/{id}"``; raise ``ValueError`` saying what is wrong."""
    method, sep, path = text.partition(" ")
    if not sep or not method or any(c.isspace() for c in path):
        raise ValueError(f"{text!r} is not 'METHOD /path'")
    if method not in HTTP_METHODS:
        raise ValueError(f"{method!r} is not an allowed HTTP method")
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    segments = tuple(path[1:].split("/")) if path != "/" else ()
    return AllowRule(method=method, pattern=path, segments=segments)


def _check_allow(value: str) -> str:
    try:
        parse_allow_rule(value)
    except ValueError as exc:
        raise _problem("allow_rule", str(exc), ALLOW_EXPECTED) from None
    return value


# --- the models ---------------------------------------------------------------------------


class IdentitySettings(BaseModel):
    """Lifetimes of the certificates and tokens the identity service issues."""

    model_config = _MODEL_CONFIG

    svid_ttl: Ttl = Field(default="1h", validate_default=True)
    max_svid_ttl: Ttl = Field(default="24h", validate_default=True)
    jwt_svid_ttl: Ttl = Field(default="5m", validate_default=True)
    ca_ttl: Ttl = Field(default="7d", validate_default=True)
    root_ttl: Ttl = Field(default="365d", validate_default=True)
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Workload API server processes; 0 means one per CPU core (at most 8).",
    )
    discovery_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the discovery API (mTLS) on listen.host; 0 picks a free one.",
    )

    @model_validator(mode="after")
    def _check_rotation_room(self) -> IdentitySettings:
        f = format_duration
        problems = _Problems()
        if self.max_svid_ttl > HARD_MAX_SVID_TTL:
            problems.add(
                ("max_svid_ttl",),
                f(self.max_svid_ttl),
                f"{f(self.max_svid_ttl)} is above the hard limit HARD_MAX_SVID_TTL",
                f"at most {f(HARD_MAX_SVID_TTL)}",
            )
        for key in ("svid_ttl", "jwt_svid_ttl"):
            ttl: timedelta = getattr(self, key)
            if ttl > self.max_svid_ttl:
                problems.add(
                    (key,),
                    f(ttl),
                    f"{f(ttl)} is longer than max_svid_ttl",
                    f"at most max_svid_ttl ({f(self.max_svid_ttl)})",
                )
        if self.ca_ttl < 2 * self.max_svid_ttl:
            problems.add(
                ("ca_ttl",),
                f(self.ca_ttl),
                f"{f(self.ca_ttl)} leaves no room for rotation",
                f"at least 2 × max_svid_ttl ({f(2 * self.max_svid_ttl)})",
            )
        if self.root_ttl < 2 * self.ca_ttl:
            problems.add(
                ("root_ttl",),
                f(self.root_ttl),
                f"{f(self.root_ttl)} leaves no room for rotation",
                f"at least 2 × ca_ttl ({f(2 * self.ca_ttl)})",
            )
        problems.raise_if_any("IdentitySettings")
        return self


def _check_leeway(value: timedelta) -> timedelta:
    if value > MAX_TOKEN_LEEWAY:
        raise _problem(
            "token_leeway",
            f"{format_duration(value)} forgives too much",
            f"at most {format_duration(MAX_TOKEN_LEEWAY)} (a few seconds is usual)",
        )
    return value


class AuthConfig(BaseModel):
    """The identity provider (OAuth 2.0 authorization server)."""

    model_config = _MODEL_CONFIG

    access_token_ttl: Ttl = Field(
        default="15m", validate_default=True, description="Lifetime of access tokens (≤ 1h)."
    )
    token_leeway: Annotated[Duration, AfterValidator(_check_leeway)] = Field(
        default="5s",
        validate_default=True,
        description="Clock leeway of every token check — the gateway, every service's SDK, "
        "the provider's checks of tokens signed elsewhere: how long past its expiry (or "
        "before its issue time) a token is still taken (≤ 30s).",
    )
    key_publish_delay: Ttl = Field(
        default="5m",
        validate_default=True,
        description="How long a new signing key is in the JWKS before it signs.",
    )
    key_rotation: Ttl = Field(
        default="24h", validate_default=True, description="Age at which a signing key is replaced."
    )
    port: int = Field(
        default=0, ge=0, le=65535, description="Port on listen.host (mTLS); 0 picks a free one."
    )
    issuer: str | None = Field(
        default=None, description="The issuer URL; by default the server's own https URL."
    )
    database: str | None = Field(
        default=None,
        description="SQLAlchemy async URL (postgresql+asyncpg://…); default SQLite in the state directory.",
    )
    redis: str | None = Field(
        default=None,
        pattern=r"^rediss?://",
        description="Redis URL: revocations are published at once (services poll otherwise).",
    )
    revocation_channel: str = Field(
        default="trustmesh:revocations",
        pattern=r"^[A-Za-z0-9:._/-]{1,128}$",
        description="The Redis channel revocations are pushed on (give each stack that "
        "shares one Redis its own).",
    )
    roles: list[Annotated[str, AfterValidator(_check_role)]] = Field(
        default_factory=lambda: ["user", "admin"],
        max_length=64,
        description="The roles users may hold (RFC 9068 roles claim); 'admin' is always one "
        "and always needs MFA.",
    )
    public_listener: bool | None = Field(
        default=None,
        description=(
            "Also serve the browser-facing endpoints (login, authorize, token for public "
            "clients, userinfo, discovery, JWKS) over server-authenticated TLS; its URL is "
            "then the issuer. Default: on in dev mode or when public_tls_cert is set."
        ),
    )
    public_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the public listener on listen.host; 0 picks one.",
    )
    public_tls_cert: str | None = Field(
        default=None,
        description="PEM certificate chain of the public listener, relative to this file "
        "(required outside dev mode; dev mode issues one from a local edge CA).",
    )
    public_tls_key: str | None = Field(
        default=None, description="PEM private key of public_tls_cert."
    )
    public_limits: ListenerLimits = Field(
        default_factory=lambda: ListenerLimits(),
        description="Connections, request-head sizes and timeouts of the public listener.",
    )

    @model_validator(mode="after")
    def _check_lifetimes(self) -> AuthConfig:
        f = format_duration
        problems = _Problems()
        if (self.public_tls_cert is None) != (self.public_tls_key is None):
            missing = "public_tls_key" if self.public_tls_key is None else "public_tls_cert"
            problems.add(
                (missing,),
                None,
                "public_tls_cert and public_tls_key go together",
                "both files, or neither",
            )
        if self.access_token_ttl > MAX_ACCESS_TOKEN_TTL:
            problems.add(
                ("access_token_ttl",),
                f(self.access_token_ttl),
                f"{f(self.access_token_ttl)} is too long for an access token",
                "at most 1h",
            )
        if self.key_rotation < 2 * (self.key_publish_delay + self.access_token_ttl):
            problems.add(
                ("key_rotation",),
                f(self.key_rotation),
                f"{f(self.key_rotation)} leaves no room for rotation",
                "at least 2 × (key_publish_delay + access_token_ttl)",
            )
        problems.raise_if_any("AuthConfig")
        return self


class ServiceSpec(BaseModel):
    """How to run one service: an ASGI app (``run``) or a command (``command``)."""

    model_config = _MODEL_CONFIG

    run: Annotated[str, AfterValidator(_check_run)] | None = Field(
        default=None, description="ASGI import string 'package.module:attr' (never imported here)"
    )
    command: Annotated[list[str], AfterValidator(_check_command)] | None = Field(
        default=None, description="argv of a process that serves the service"
    )
    port: (
        Annotated[
            int,
            AfterValidator(_check_port),
            WithJsonSchema({"type": "integer", "minimum": 1024, "maximum": 65535}),
        ]
        | None
    ) = None

    external: bool = Field(
        default=False,
        description="runs outside `trustmesh up` (started by hand or elsewhere); it still "
        "gets an identity through a registration entry or a join token",
    )
    runtime: RuntimeProfile = Field(
        default_factory=RuntimeProfile,
        description="What its process may do once serving (trustmesh.sdk.guard); "
        "default: nothing beyond what is implied, in monitor mode",
    )

    @model_validator(mode="after")
    def _exactly_one_way_to_run(self) -> ServiceSpec:
        if self.run is None and self.runtime != RuntimeProfile():
            # the SDK runner installs the guard; a command's process or an external one
            # is not started by it, and a profile nobody holds must not look held
            problems = _Problems()
            problems.add(
                ("runtime",),
                None,
                "a runtime profile is held only in a service the SDK runner runs",
                "run: 'package.module:app' with it, or no runtime: here",
            )
            problems.raise_if_any("ServiceSpec")
        if self.external:
            if self.run is not None or self.command is not None:
                raise _problem(
                    "service", "is external but has 'run' or 'command'", "neither, when external"
                )
            return self
        if (self.run is None) == (self.command is None):
            has = "both" if self.run is not None else "neither"
            raise _problem(
                "service",
                f"has {has} 'run' and 'command'",
                "exactly one of them (or external: true)",
            )
        return self


class CallSpec(BaseModel):
    """Service ``from`` may call these routes of service ``to``; everything else is denied."""

    model_config = _MODEL_CONFIG

    from_: str = Field(alias="from")
    to: str
    allow: list[Annotated[str, AfterValidator(_check_allow)]] = Field(
        min_length=1, description='routes of "to" that "from" may call, e.g. "GET /items/{id}"'
    )

    _rules: tuple[AllowRule, ...] = PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        self._rules = tuple(parse_allow_rule(item) for item in self.allow)

    @property
    def rules(self) -> tuple[AllowRule, ...]:
        """The parsed ``allow`` items, in order."""
        return self._rules

    @model_validator(mode="after")
    def _no_duplicate_rules(self) -> CallSpec:
        seen: dict[str, int] = {}
        problems = _Problems()
        for index, item in enumerate(self.allow):
            if item in seen:
                problems.add(
                    ("allow", index), item, f"repeats allow[{seen[item]}]", "each rule once"
                )
            seen.setdefault(item, index)
        problems.raise_if_any("CallSpec")
        return self


class TrustmeshConfig(BaseModel):
    """The whole declaration: trust domain, services and who may call whom."""

    model_config = _MODEL_CONFIG

    trust_domain: Annotated[
        str,
        AfterValidator(_check_trust_domain),
        WithJsonSchema(
            {"type": "string", "pattern": r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$", "maxLength": 255}
        ),
    ] = Field(description="SPIFFE trust domain name (SPIFFE-ID §2.1), such as shop.example")
    dev: bool = Field(default=False, description="dev mode: allows a 0600 key file to seal keys")
    listen: ListenSettings = Field(
        default_factory=ListenSettings,
        description="Where every listener binds (trustmesh.config.listen): loopback by "
        "default, and only loopback in dev mode.",
    )
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    gateway: GatewayConfig | None = Field(
        default=None, description="The edge gateway; `trustmesh up` runs it when declared."
    )
    secrets: SecretsConfig | None = Field(
        default=None,
        description="The secrets service (Vault HTTP API); `trustmesh up` runs it when declared.",
    )
    audit: AuditConfig | None = Field(
        default=None,
        description="The audit collector; `trustmesh up` runs it when declared, and every "
        "component then delivers its events to it.",
    )
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    shared: SharedState | None = Field(
        default=None,
        description="The scale-out configuration's shared state (trustmesh.config.shared): "
        "every store on one PostgreSQL, a schema and a role per component; rate limits and "
        "revocations on one Redis.",
    )
    services: dict[ServiceName, ServiceSpec] = Field(default_factory=dict)
    calls: list[CallSpec] = Field(default_factory=list)
    testing: SwitchesConfig | None = Field(
        default=None,
        description="Test-only defence switches (trustmesh.config.switches): refused "
        "unless TRUSTMESH_TESTING_SWITCHES=1, and by `config check --strict`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shared_redis(cls, data: Any) -> Any:
        """``shared.redis`` is the gateway's and the provider's ``redis`` where they
        declare none (the declaration as read, before its fields are checked)."""
        if not isinstance(data, dict) or not isinstance(data.get("shared"), dict):
            return data
        url = data["shared"].get("redis")
        if not isinstance(url, str):
            return data
        data = dict(data)
        for section in ("auth", "gateway"):
            declared = data.get(section, {} if section == "auth" else None)
            if isinstance(declared, dict) and declared.get("redis") is None:
                data[section] = {**declared, "redis": url}
        return data

    @property
    def auth_public_listener(self) -> bool:
        """Whether the identity provider serves browsers (see AuthConfig.public_listener)."""
        if self.auth.public_listener is not None:
            return self.auth.public_listener
        return self.dev or self.auth.public_tls_cert is not None

    @model_validator(mode="after")
    def _distinct_ports(self) -> TrustmeshConfig:
        # A model check (not a ``services`` field check) so that an unknown service named
        # in ``calls`` is still reported alongside a port clash.
        problems = _Problems()
        if self.auth.public_listener is True and not self.dev and self.auth.public_tls_cert is None:
            problems.add(
                ("auth", "public_tls_cert"),
                None,
                "the public listener needs a certificate outside dev mode",
                "a PEM certificate chain file (and public_tls_key), or public_listener: false",
            )
        ports: dict[int, str] = {}
        for name, spec in self.services.items():
            if spec.port is None:
                continue
            if spec.port in ports:
                problems.add(
                    ("services", name, "port"),
                    spec.port,
                    f"port {spec.port} is used by both {ports[spec.port]!r} and {name!r}",
                    "a different port for each service",
                )
            ports.setdefault(spec.port, name)
        if self.gateway is not None:
            if not self.dev and self.gateway.tls_cert is None:
                problems.add(
                    ("gateway", "tls_cert"),
                    None,
                    "the gateway needs a certificate outside dev mode",
                    "a PEM certificate chain file (and tls_key)",
                )
            declared = {"admin", *self.auth.roles}
            for index, issuer in enumerate(self.gateway.issuers):
                for role in issuer.roles or ():
                    if role not in declared:
                        problems.add(
                            ("gateway", "issuers", index, "roles"),
                            role,
                            f"{role!r} is not a declared role",
                            "one of: " + ", ".join(sorted(declared)) + " (auth.roles)",
                        )
            known = ", ".join(sorted(self.services)) or "(no services declared)"
            for index, route in enumerate(self.gateway.routes):
                if route.to not in self.services:
                    problems.add(
                        ("gateway", "routes", index, "to"),
                        route.to,
                        f"{route.to!r} is not a declared service",
                        f"one of: {known}",
                    )
        self._check_secrets(problems)
        self._check_console(problems)
        self._check_switches(problems)
        self._check_listen(problems)
        problems.raise_if_any("TrustmeshConfig")
        return self

    def _check_switches(self, problems: _Problems) -> None:
        """A test switch must turn off a defence this declaration runs: one for a
        component it does not start (or a gateway engine that does not consult it:
        nginx parses and routes, the Python engine alone is switched) would let a test
        pass while nothing was off."""
        if self.testing is None:
            return
        engine = self.gateway.engine if self.gateway is not None else None
        running = {
            "gateway": engine == "python",
            "service": any(not spec.external for spec in self.services.values()),
            "secrets": self.secrets is not None,
            "attack": True,
        }
        for name in self.testing.defences_off:
            component = DEFENCES[name][0]
            if not running[component]:
                where = "the Python gateway engine" if component == "gateway" else component
                problems.add(
                    ("testing", "defences_off"),
                    name,
                    f"{name!r} switches off a defence of {where}, which this declaration "
                    "does not run",
                    "only switches of what the declaration runs",
                )

    def _check_listen(self, problems: _Problems) -> None:
        """Dev mode listens on loopback only (see :mod:`trustmesh.config.listen`)."""
        bind = dev_bind_problem(self.dev, self.listen.host)
        if bind is not None:
            problems.add(("listen", "host"), self.listen.host, bind, DEV_EXPECTED)

    def _check_console(self, problems: _Problems) -> None:
        console = self.audit.console if self.audit is not None else None
        if console is None:
            return
        if not self.auth_public_listener:
            problems.add(
                ("audit", "console"),
                None,
                "admins sign in to the console at the provider's public listener, which is off",
                "auth.public_listener: true (with public_tls_cert outside dev mode)",
            )
        if not self.dev and console.tls_cert is None:
            problems.add(
                ("audit", "console", "tls_cert"),
                None,
                "the console needs a certificate outside dev mode",
                "a PEM certificate chain file (and tls_key)",
            )

    def _check_secrets(self, problems: _Problems) -> None:
        if self.secrets is None:
            return
        if self.secrets.dev_auto_unseal and not self.dev:
            problems.add(
                ("secrets", "dev_auto_unseal"),
                True,
                "auto-unseal from a key file beside the data is for dev mode only",
                "dev: true, or unseal with `trustmesh secrets unseal`",
            )
        prefix = f"spiffe://{self.trust_domain}/"
        known = ", ".join(sorted(self.services)) or "(no services declared)"
        for index, policy in enumerate(self.secrets.policies):
            name = policy.identity
            if name.startswith("spiffe://"):
                ok = name.startswith(prefix) and len(name) > len(prefix)
                expected = f"a SPIFFE ID under {prefix}"
            else:
                ok = name == "operator" or name in self.services
                expected = f"'operator' or one of: {known}"
            if not ok:
                problems.add(
                    ("secrets", "policies", index, "identity"),
                    name,
                    f"{name!r} is not an identity of this trust domain",
                    expected,
                )

    def secrets_identity(self, name: str) -> str:
        """The SPIFFE ID a ``secrets.policies`` entry names: a service, the operator, or
        a SPIFFE ID as written."""
        if name.startswith("spiffe://"):
            return name
        if name == "operator":
            return self.component_spiffe_id("operator")
        return f"spiffe://{self.trust_domain}/{name}"

    @field_validator("calls")
    @classmethod
    def _check_references(cls, calls: list[CallSpec], info: ValidationInfo) -> list[CallSpec]:
        # Runs after ``services`` (declaration order); if services failed, only the
        # checks that need no service list are made.
        services: dict[str, ServiceSpec] | None = info.data.get("services")
        known = ", ".join(sorted(services or {})) or "(no services declared)"
        problems = _Problems()
        pairs: dict[tuple[str, str], int] = {}
        for index, call in enumerate(calls):
            for key, name in (("from", call.from_), ("to", call.to)):
                if services is not None and name not in services:
                    problems.add(
                        (index, key),
                        name,
                        f"{name!r} is not a declared service",
                        f"one of: {known}",
                    )
            if call.from_ == call.to:
                problems.add(
                    (index, "to"),
                    call.to,
                    f"{call.to!r} calls itself",
                    "a service other than 'from'",
                )
            pair = (call.from_, call.to)
            if pair in pairs:
                problems.add(
                    (index,),
                    pair,
                    f"repeats calls[{pairs[pair]}] ({call.from_} → {call.to})",
                    "one entry per (from, to) pair; merge their allow lists",
                )
            pairs.setdefault(pair, index)
        problems.raise_if_any("calls")
        return calls

    def spiffe_id(self, service: str) -> str:
        """``spiffe://<trust-domain>/<service>`` of a declared service."""
        if service not in self.services:
            raise NotFoundError(f"service {service!r} is not declared in the configuration")
        return f"spiffe://{self.trust_domain}/{service}"

    def component_spiffe_id(self, component: str) -> str:
        """``spiffe://<trust-domain>/trustmesh/<component>`` of a trustmesh component."""
        if _SERVICE_NAME_RE.fullmatch(component) is None:
            raise UsageError(f"{component!r} is not a valid component name")
        return f"spiffe://{self.trust_domain}/trustmesh/{component}"
