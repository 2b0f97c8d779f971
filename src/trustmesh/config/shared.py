"""The scale-out configuration's shared state (``shared:``): one PostgreSQL database every
store moves to, and one Redis every gateway and provider shares.

``shared.postgres`` names a role that may create roles and schemas (``CREATEROLE``, and
``CREATE`` on the database). ``trustmesh up`` connects as that role once, before anything
starts, and gives each component a schema and a role of its own
(:mod:`trustmesh.store.shared`): the provider, the secrets service and the gateway own
their schema and nothing else; the audit collector's role may only INSERT and SELECT on
its tables, which the owner makes (and, with retention declared, a pruning role may
DELETE records and nothing else). Each role's password is random, kept sealed under the
state directory, and set again at every ``up``. A component that declares a
``database:`` of its own keeps it and is not provisioned.

``shared.redis`` is the ``redis:`` of the gateway (rate limits shared by every gateway
process) and of the provider (revocations pushed at once), where they set none."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

__all__ = ["POSTGRES_EXPECTED", "SharedState"]

POSTGRES_EXPECTED: Final = (
    "postgresql://ROLE@HOST:PORT/DATABASE (a role that may create roles and schemas; "
    "postgresql+asyncpg:// is taken too)"
)
_PREFIX_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,29}")


def _problem(problem: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError(
        "shared_state",
        "{problem} (expected {expected})",
        {"problem": problem, "expected": expected},
    )


class SharedState(BaseModel):
    """Where the stores and the counters go when a team outgrows one process."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    postgres: str | None = Field(
        default=None,
        description="The owner's URL: `trustmesh up` makes a schema and a role per "
        "component there, and every store (the provider's, the secrets service's, the "
        "gateway's API keys, the audit log) uses its own. Unset: SQLite files in the "
        "state directory.",
    )
    redis: str | None = Field(
        default=None,
        pattern=r"^rediss?://",
        description="redis:// or rediss:// URL: the gateway's and the provider's `redis` "
        "where they declare none (shared rate limits, revocations pushed at once).",
    )
    prefix: str = Field(
        default="trustmesh",
        description="Names of the schemas and roles: PREFIX_auth, PREFIX_secrets, "
        "PREFIX_gateway, PREFIX_audit (give each stack that shares one database its own).",
    )

    @field_validator("postgres")
    @classmethod
    def _check_postgres(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgresql+asyncpg"):
            raise _problem(
                f"scheme {parts.scheme or '(none)'!r} is not PostgreSQL's", POSTGRES_EXPECTED
            )
        if not parts.hostname or not parts.username or parts.path.strip("/") == "":
            raise _problem("a host, a role and a database are all needed", POSTGRES_EXPECTED)
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX_RE.fullmatch(value):
            raise _problem(
                f"{value!r} cannot start a PostgreSQL name",
                "1 to 30 lowercase letters, digits or _, starting with a letter",
            )
        return value
