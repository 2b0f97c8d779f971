"""The ``secrets:`` section of the declaration: the secrets service's listener, store,
token lifetimes, audit device and who may do what on which path.

Access is declared per identity, as Vault's path ACLs are written (``capabilities`` on a
path pattern; ``*`` at the end matches any rest, ``+`` one segment; ``deny`` wins over
everything). An identity that is not listed can do nothing::

    secrets:
      policies:
        - {identity: payments, allow: {"secret/data/payments/*": [read]}}
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from trustmesh.config.durations import Duration, format_duration

__all__ = ["CAPABILITIES", "SecretsConfig", "SecretsPolicy", "path_pattern_problem"]

_MODEL_CONFIG: Final = ConfigDict(frozen=True, extra="forbid", strict=True)
#: Vault's capabilities (``sudo`` is not offered: the operator's identity does that work).
CAPABILITIES: Final = ("create", "read", "update", "patch", "delete", "list", "deny")
Capability = Literal["create", "read", "update", "patch", "delete", "list", "deny"]
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9._~-]+")
_IDENTITY_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}|spiffe://[^\s]{1,2000}")
MAX_TOKEN_TTL: Final = timedelta(days=31)


def path_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a path pattern, or None: segments of ``[A-Za-z0-9._~-]``
    (never ``.`` or ``..``), ``+`` for exactly one segment, and an optional final ``*``
    (any rest, also within the last segment: ``secret/data/pay*``)."""
    if not pattern or len(pattern) > 512:
        return "a path pattern of 1 to 512 characters"
    body = pattern[:-1] if pattern.endswith("*") else pattern
    if body.startswith("/") or "//" in body:
        return "no leading '/' and no empty segment"
    segments = body.split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "" and index == last and pattern.endswith("*"):
            continue  # 'secret/data/*'
        if segment == "+":
            continue
        if segment in (".", "..") or (
            _SEGMENT_RE.fullmatch(segment) is None
            and not (index == last and segment == "" and pattern == "*")
        ):
            return f"segments of [A-Za-z0-9._~-], '+' or a final '*' (not {segment!r})"
    return None


def _check_pattern(value: str) -> str:
    problem = path_pattern_problem(value)
    if problem is not None:
        raise PydanticCustomError(
            "invalid",
            "{value!r} is not a path pattern (expected {expected})",
            {"value": value[:80], "expected": problem},
        )
    return value


def _check_identity(value: str) -> str:
    if _IDENTITY_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "invalid",
            "{value!r} is not an identity (expected a declared service's name, 'operator', "
            "or a spiffe:// ID of the trust domain)",
            {"value": value[:80]},
        )
    return value


class SecretsPolicy(BaseModel):
    """What one identity may do: capabilities per path pattern."""

    model_config = _MODEL_CONFIG

    identity: Annotated[str, AfterValidator(_check_identity)] = Field(
        description="A declared service's name, 'operator' (trustmesh's operator), or a "
        "spiffe:// ID of the trust domain."
    )
    allow: dict[Annotated[str, AfterValidator(_check_pattern)], list[Capability]] = Field(
        min_length=1,
        max_length=256,
        description="Path pattern → capabilities (create, read, update, patch, delete, "
        "list, deny; deny wins).",
    )

    @model_validator(mode="after")
    def _capabilities_listed(self) -> SecretsPolicy:
        for pattern, capabilities in self.allow.items():
            if not capabilities:
                raise PydanticCustomError(
                    "invalid",
                    "{pattern!r} grants nothing (expected at least one capability)",
                    {"pattern": pattern},
                )
        return self


class SecretsConfig(BaseModel):
    """The secrets service (Vault HTTP API subset); `trustmesh up` runs it when declared."""

    model_config = _MODEL_CONFIG

    port: int = Field(
        default=0, ge=0, le=65535, description="Port on listen.host (mTLS); 0 picks one."
    )
    database: str | None = Field(
        default=None,
        description="SQLAlchemy async URL (postgresql+asyncpg://…); default SQLite in the "
        "state directory.",
    )
    audit_file: str | None = Field(
        default=None,
        description="The file audit device (JSON lines, fsynced); default "
        "<state>/secrets/audit.jsonl. If it cannot record a request, the request fails.",
    )
    token_ttl: Duration = Field(
        default="1h", validate_default=True, description="Default lifetime of a login token."
    )
    token_max_ttl: Duration = Field(
        default="24h",
        validate_default=True,
        description="How long a login token may be renewed to, from its creation.",
    )
    dev_auto_unseal: bool | None = Field(
        default=None,
        description="Initialise with one share and unseal at start from a 0600 key file in "
        "the state directory (dev mode only; default: on in dev mode).",
    )
    policies: list[SecretsPolicy] = Field(
        default_factory=list,
        max_length=1024,
        description="Who may do what; an identity not listed can do nothing.",
    )

    @model_validator(mode="after")
    def _check(self) -> SecretsConfig:
        if self.token_ttl <= timedelta(0) or self.token_max_ttl > MAX_TOKEN_TTL:
            raise PydanticCustomError(
                "invalid",
                "token lifetimes must be positive and at most {most}",
                {"most": format_duration(MAX_TOKEN_TTL)},
            )
        if self.token_ttl > self.token_max_ttl:
            raise PydanticCustomError(
                "invalid",
                "token_ttl {ttl} is longer than token_max_ttl {max}",
                {
                    "ttl": format_duration(self.token_ttl),
                    "max": format_duration(self.token_max_ttl),
                },
            )
        seen: set[str] = set()
        for policy in self.policies:
            if policy.identity in seen:
                raise PydanticCustomError(
                    "invalid",
                    "{identity!r} is listed twice (expected one entry per identity)",
                    {"identity": policy.identity},
                )
            seen.add(policy.identity)
        return self
