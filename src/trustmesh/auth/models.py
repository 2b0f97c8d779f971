"""The admin API's request bodies (:mod:`trustmesh.auth.admin`), as frozen pydantic
models: an unknown field or a value of the wrong type is refused (400
``invalid_request``, naming the field) before anything is read or changed. What a value
must be beyond its type (a client id's characters, a known role, a registered redirect
URI) the admin API checks, with its own messages."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trustmesh.errors import UsageError
from trustmesh.platform.admin import json_object

__all__ = [
    "MAX_BODY",
    "NewClient",
    "NewPassword",
    "NewUser",
    "NoFields",
    "SubjectRevocation",
    "parse_body",
]

MAX_BODY = 256 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NewClient(_Body):
    """``POST /admin/v1/clients``. Unset, ``client_id`` and ``audiences`` are refused
    by the admin API's own checks (with what they must be)."""

    client_id: str = ""
    method: str = "private_key_jwt"
    jwks: dict[str, Any] | None = None  # private_key_jwt only
    spiffe_id: str | None = None  # tls_client_auth only
    audiences: list[str] = []
    scopes: list[str] = []
    redirect_uris: list[str] = []


class NewUser(_Body):
    """``POST /admin/v1/users``. ``roles`` unset: the declaration's first role;
    ``password`` unset: a generated one; ``mfa``: always for an admin."""

    username: str = ""
    roles: list[str] = []
    password: str | None = None
    mfa: bool | None = None


class SubjectRevocation(_Body):
    """``POST /admin/v1/revocations``: every token of ``subject`` (a user's ``sub``, or a
    client's) issued so far stops working."""

    subject: str = Field(min_length=1, max_length=256)
    cause: str = Field(default="admin", min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")


class NewPassword(_Body):
    """``POST /admin/v1/users/{username}/password``: ``{}`` for a generated one."""

    password: str | None = None


class NoFields(_Body):
    """An action that takes no fields (lock, unlock, reset MFA, rotate keys): an empty
    body, or ``{}``."""


B = TypeVar("B", bound=_Body)


def parse_body(model: type[B], raw: bytes, *, optional: bool = False) -> B:
    """``raw`` (a JSON object) as ``model``; ``optional``: an empty body is ``{}``.
    UsageError (400) for anything else: too large, not JSON, not an object, an unknown
    field (named), a value of the wrong type."""
    doc = json_object(raw, MAX_BODY, empty=optional)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise UsageError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    """What was wrong, never the value (it may be a password): an unknown field first
    (the likeliest mistake: a misspelt name), else the first field refused."""
    errors = exc.errors(include_url=False, include_input=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    error = (unknown or errors)[0]
    where = ".".join(str(part) for part in error["loc"])[:64]
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where}: {error['msg']}"
