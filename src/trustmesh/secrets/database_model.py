"""The database secrets engine's values and rules, without I/O: a connection, a role and
a lease as stored (frozen; JSON inside the barrier's seal), how a request body writes
them (Vault's fields; a field left out keeps its value; anything unknown is refused),
a lease's TTL (Vault's ``CalculateTTL``), and the SQL text this engine writes itself:
identifiers quoted, literals only of values it made, templates filled only with
generated names, passwords and times. :mod:`trustmesh.secrets.database` runs them."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

from trustmesh.config.durations import seconds_or_zero
from trustmesh.errors import UsageError
from trustmesh.secrets.kv import rfc3339

__all__ = [
    "ALNUM",
    "LEASE_RE",
    "NAME_PATTERN",
    "PLUGIN",
    "SYSTEM_DEFAULT_TTL",
    "SYSTEM_MAX_TTL",
    "Connection",
    "Lease",
    "Role",
    "describe",
    "from_bytes",
    "lease_ttl",
    "new_username",
    "quote_ident",
    "random_text",
    "render",
    "scram_verifier",
    "sql_literal",
    "to_bytes",
    "ttl_seconds",
    "valid_until",
]

PLUGIN: Final = "postgresql-database-plugin"
#: The mount's default and max lease TTL (Vault's system defaults: 768h).
SYSTEM_DEFAULT_TTL: Final = 768 * 3600
SYSTEM_MAX_TTL: Final = 768 * 3600
NAME_PATTERN: Final = r"[A-Za-z0-9_.-]{1,128}"
LEASE_RE: Final = re.compile(rf"database/creds/({NAME_PATTERN})/[A-Za-z0-9]{{24}}")
ALNUM: Final = string.ascii_letters + string.digits

_NAME_RE: Final = re.compile(NAME_PATTERN)
_USERNAME_RE: Final = re.compile(r"v-[a-z0-9]{1,8}-[a-z0-9]{1,8}-[a-z0-9]{20}-[0-9]{1,12}")
_LITERAL_RE: Final = re.compile(r"[A-Za-z0-9+/=$:. -]*")
_TEMPLATE_RE: Final = re.compile(r"\{\{\s*(name|username|password|expiration)\s*\}\}")
_NAMED_RE: Final = re.compile(r"\{\{\s*(name|username)\s*\}\}")
_PASSWORD_PARAMETERS: Final = frozenset({"password", "passfile", "sslpassword"})
_LOWER: Final = string.ascii_lowercase + string.digits
_T = TypeVar("_T")


# -- SQL text ----------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier (double-quoted, quotes doubled)."""
    if not name or "\x00" in name or len(name.encode()) > 63:
        raise UsageError("an identifier must be 1 to 63 bytes without NUL")
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    """A string literal of a value this module made (never of input): checked, quoted."""
    if _LITERAL_RE.fullmatch(value) is None:
        raise ValueError("not a literal this module makes")
    return f"'{value}'"


def render(statement: str, values: Mapping[str, str]) -> str:
    """A statement with its ``{{name}}``/``{{username}}``/``{{password}}``/
    ``{{expiration}}`` templates filled (the values are generated, never input)."""
    return _TEMPLATE_RE.sub(lambda m: values.get(m.group(1), m.group(0)), statement)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, RFC 7677), which
    ``ALTER ROLE … PASSWORD`` stores as it is: the server never sees the password.
    ``password`` is ASCII (the ones made here), which SASLprep leaves alone."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    stored = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server_key)}"


def random_text(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_username(display_name: str, role: str, now: float) -> str:
    """Vault's default, ``v-<display name, 8>-<role, 8>-<random 20>-<unix time>``, in
    lowercase letters, digits and ``-`` only."""

    def part(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())[:8] or "x"

    name = f"v-{part(display_name)}-{part(role)}-{random_text(_LOWER, 20)}-{int(now)}"
    if _USERNAME_RE.fullmatch(name) is None:  # pragma: no cover - the parts make sure
        raise ValueError("generated a username outside its alphabet")
    return name


def valid_until(at: float) -> str:
    """``{{expiration}}``: a timestamp PostgreSQL reads (``VALID UNTIL``)."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S+0000")


def describe(exc: BaseException, *hidden: str | None) -> str:
    """A database error for an answer or a log: its kind and message, any secret out."""
    text = f"{type(exc).__name__}: {exc}"
    for value in hidden:
        if value:
            text = text.replace(value, "[redacted]")
    return text[:300]  # cut once redacted: no piece of a secret is left at the cut


# -- request bodies ----------------------------------------------------------------------


def _strings(value: object, key: str, *, commas: bool = False) -> tuple[str, ...]:
    """A list of strings; a string is one item (``commas``: comma-separated items)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")] if commas else [value]
        return tuple(v for v in items if v)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v.strip())
    raise UsageError(f"{key} must be a list of strings or a string")


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{key} must be a string")
    return value


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise UsageError(f"{key} must be true or false")


def ttl_seconds(value: object, key: str) -> int:
    """A TTL as Vault takes it: seconds or a duration such as '1h'; 0 or none: unset."""
    try:
        return seconds_or_zero(value)
    except ValueError:
        raise UsageError(f"{key} must be a number of seconds or a duration such as '1h'") from None


def _refuse_unknown(body: Mapping[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise UsageError(f"unsupported parameter: {unknown[0][:64]}")


def check_name(name: str, what: str) -> str:
    if _NAME_RE.fullmatch(name) is None:
        raise UsageError(f"a {what} name is 1 to 128 of [A-Za-z0-9_.-]")
    return name


def _check_url(url: str) -> str:
    """A ``postgresql://`` URL naming no password but ``{{password}}``: the root password
    is given apart (``password``) so that no read ever shows it."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not parts.netloc:
        raise UsageError(
            "connection_url must be a postgresql:// URL (keyword/value strings are not supported)"
        )
    query = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if parts.password not in (None, "{{password}}") or query & _PASSWORD_PARAMETERS:
        raise UsageError(
            "connection_url must not hold a password: give it as password and write "
            "{{password}} in the URL"
        )
    return url


def to_bytes(value: Any) -> bytes:
    return json.dumps(dataclasses.asdict(value)).encode()


def from_bytes(cls: type[_T], raw: bytes) -> _T:
    doc = json.loads(raw)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


# -- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """``database/config/<name>``: how to reach one PostgreSQL database as its root."""

    name: str
    connection_url: str
    username: str
    password: str
    allowed_roles: tuple[str, ...] = ()
    verify_connection: bool = True
    root_rotation_statements: tuple[str, ...] = ()
    pending_password: str | None = None  # set while a root rotation is under way

    FIELDS = (
        "plugin_name",
        "plugin_version",
        "connection_url",
        "username",
        "password",
        "allowed_roles",
        "verify_connection",
        "root_rotation_statements",
    )

    @classmethod
    def configured(
        cls, name: str, current: Connection | None, body: Mapping[str, Any]
    ) -> Connection:
        """The connection ``body`` writes over ``current`` (a field left out keeps its
        value, as Vault's update does)."""
        _refuse_unknown(body, cls.FIELDS)
        plugin = body.get("plugin_name", PLUGIN if current else None)
        if plugin != PLUGIN:
            raise UsageError(f"plugin_name must be {PLUGIN!r} (the only plugin offered)")
        if body.get("plugin_version", "") not in ("", None):
            raise UsageError("plugin_version is not supported")
        if current is None and "connection_url" not in body:
            raise UsageError("connection_url is required")
        given: dict[str, Callable[[Any], Any]] = {
            "connection_url": lambda v: _check_url(_text(v, "connection_url")),
            "username": lambda v: _text(v, "username"),
            "password": lambda v: _text(v, "password"),
            "allowed_roles": lambda v: _strings(v, "allowed_roles", commas=True),
            "verify_connection": lambda v: _flag(v, "verify_connection"),
            "root_rotation_statements": lambda v: _strings(v, "root_rotation_statements"),
        }
        changes: dict[str, Any] = {
            k: parse(body[k]) for k, parse in given.items() if body.get(k) is not None
        }
        if "password" in changes:
            changes["pending_password"] = None
        base = current or cls(name, "", "", "")
        made = replace(base, **changes)
        if "{{username}}" in made.connection_url and not made.username:
            raise UsageError("username is required: connection_url names {{username}}")
        if made.password and "{{password}}" not in made.connection_url:
            raise UsageError("connection_url must name {{password}} to use the password")
        return made

    def allows(self, role: str) -> bool:
        """Whether ``role`` may use this connection (``allowed_roles``: names, or globs
        with ``*``; none: no role)."""
        return any(
            re.fullmatch(".*".join(re.escape(p) for p in allowed.split("*")), role)
            for allowed in self.allowed_roles
        )

    def dsn(self, password: str) -> str:
        return self.connection_url.replace("{{username}}", quote(self.username, safe="")).replace(
            "{{password}}", quote(password, safe="")
        )

    def read(self) -> dict[str, Any]:
        """What ``GET database/config/<name>`` answers: never a password."""
        return {
            "plugin_name": PLUGIN,
            "plugin_version": "",
            "connection_details": {
                "connection_url": self.connection_url,
                "username": self.username,
            },
            "allowed_roles": list(self.allowed_roles),
            "root_credentials_rotate_statements": list(self.root_rotation_statements),
            "password_policy": "",
            "verify_connection": self.verify_connection,
        }


@dataclass(frozen=True)
class Role:
    """``database/roles/<name>``: the statements that make, renew and revoke a login, and
    its lease's default and max TTL (seconds; 0: the mount's)."""

    name: str
    db_name: str
    creation_statements: tuple[str, ...]
    revocation_statements: tuple[str, ...] = ()
    renew_statements: tuple[str, ...] = ()
    default_ttl: int = 0
    max_ttl: int = 0

    FIELDS = (
        "db_name",
        "creation_statements",
        "revocation_statements",
        "rollback_statements",
        "renew_statements",
        "default_ttl",
        "max_ttl",
        "credential_type",
    )

    @classmethod
    def configured(cls, name: str, current: Role | None, body: Mapping[str, Any]) -> Role:
        _refuse_unknown(body, cls.FIELDS)
        if body.get("credential_type", "password") != "password":
            raise UsageError("credential_type must be 'password'")
        if body.get("rollback_statements"):
            raise UsageError(
                "rollback_statements are not used: the creation statements run in one "
                "transaction, rolled back if one fails"
            )
        changes: dict[str, Any] = {}
        if body.get("db_name") is not None:
            changes["db_name"] = check_name(_text(body["db_name"], "db_name"), "connection")
        for key in ("creation_statements", "revocation_statements", "renew_statements"):
            if body.get(key) is not None:
                changes[key] = _strings(body[key], key)
        for key in ("default_ttl", "max_ttl"):
            if key in body:
                changes[key] = ttl_seconds(body[key], key)
        role = replace(current or cls(name, "", ()), **changes)
        if not role.db_name:
            raise UsageError("db_name is required")
        if not any(_NAMED_RE.search(s) for s in role.creation_statements):
            raise UsageError("creation_statements are required and must name {{name}}")
        if role.max_ttl and role.default_ttl > role.max_ttl:
            raise UsageError("default_ttl cannot be greater than max_ttl")
        return role

    def read(self) -> dict[str, Any]:
        return {
            "db_name": self.db_name,
            "creation_statements": list(self.creation_statements),
            "revocation_statements": list(self.revocation_statements),
            "rollback_statements": [],
            "renew_statements": list(self.renew_statements),
            "default_ttl": self.default_ttl,
            "max_ttl": self.max_ttl,
            "credential_type": "password",
        }


@dataclass(frozen=True)
class Lease:
    """One issued login; the role's revocation statements as they were at issue serve
    if the role is deleted before the lease ends."""

    lease_id: str
    role: str
    db_name: str
    username: str
    issued: float
    expires: float
    last_renewal: float | None = None
    revocation_statements: tuple[str, ...] = ()
    token_accessor: str = ""  # the token that created it: revoked with it, never outlives it

    def lookup(self, now: float) -> dict[str, Any]:
        """``sys/leases/lookup``'s answer."""
        return {
            "id": self.lease_id,
            "issue_time": rfc3339(self.issued),
            "expire_time": rfc3339(self.expires),
            "last_renewal": rfc3339(self.last_renewal) or None,
            "renewable": True,
            "ttl": max(0, int(self.expires - now)),
        }


def lease_ttl(
    increment: float, role: Role, issued: float, now: float, not_after: float
) -> tuple[int, str | None]:
    """A lease's TTL from ``now`` (Vault's ``CalculateTTL``): ``increment``, else the role's
    default, else the mount's; never past the role's (else the mount's) max TTL from
    ``issued``, nor past ``not_after`` (when the token that created it expires) — then
    capped, with a warning."""
    max_ttl = min(role.max_ttl or SYSTEM_MAX_TTL, SYSTEM_MAX_TTL)
    wanted = int(increment or role.default_ttl or SYSTEM_DEFAULT_TTL)
    left = int(issued + max_ttl - now)
    token_left = int(min(not_after - now, SYSTEM_MAX_TTL))
    if wanted <= min(left, token_left):
        return wanted, None
    if token_left < left:
        warning = (
            f"TTL of {wanted}s exceeded the remaining life of the token that created the "
            f"lease ({max(0, token_left)}s); TTL value is capped accordingly"
        )
        return max(0, token_left), warning
    warning = (
        f"TTL of {wanted}s exceeded the effective max_ttl of {max_ttl}s; "
        "TTL value is capped accordingly"
    )
    return max(0, left), warning
