"""Object-level authorization: may this end user (the token's subject) do this action to
this object? Cedar policies a service writes about its own objects, for example::

    permit(principal, action == Action::"read", resource is Order)
      when { resource.owner == principal };

Principals are ``User::"<token subject>"`` with the attribute ``roles`` (the token's
roles claim, a set: ``principal.roles.contains("support")``); a resource is ``<Type>::"<id>"`` with the
attributes the service passes (a :class:`User` value is an entity reference, so
``resource.owner == principal`` compares identities). Pure: parsed once, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cedarpy

from trustmesh.errors import UsageError
from trustmesh.reasons import Reason

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class User:
    """A reference to the end user ``id`` (a token subject), as an attribute value."""

    id: str


AttributeValue = str | int | bool | User


@dataclass(frozen=True)
class ObjectDecision:
    allowed: bool
    reason: Reason
    policies: tuple[str, ...] = ()


def _ref(kind: str, ident: str) -> dict[str, dict[str, str]]:
    return {"__entity": {"type": kind, "id": ident}}


class ObjectPolicy:
    """A service's Cedar policies about its objects; default deny."""

    def __init__(self, policies: str) -> None:
        try:
            self._policies = cedarpy.PolicySet.from_str(policies)
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"object policies do not parse: {exc}") from None
        self.text = policies

    def decide(
        self,
        principal: str,
        action: str,
        resource_type: str,
        resource_id: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        roles: Sequence[str] = (),
    ) -> ObjectDecision:
        if not _NAME.fullmatch(resource_type):
            raise UsageError(f"resource type {resource_type!r} is not a Cedar type name")
        attrs: dict[str, object] = {}
        for key, value in (attributes or {}).items():
            if not _NAME.fullmatch(key):
                raise UsageError(f"attribute {key!r} is not a Cedar attribute name")
            attrs[key] = _ref("User", value.id) if isinstance(value, User) else value
        entities = [
            {"uid": _ref("User", principal), "attrs": {"roles": list(roles)}, "parents": []},
            {"uid": _ref(resource_type, resource_id), "attrs": attrs, "parents": []},
        ]
        result = cedarpy.is_authorized(
            {
                "principal": {"type": "User", "id": principal},
                "action": {"type": "Action", "id": action},
                "resource": {"type": resource_type, "id": resource_id},
                "context": {},
            },
            self._policies,
            json.dumps(entities),
        )
        if result.allowed:
            return ObjectDecision(True, Reason.POLICY_ALLOW, tuple(result.diagnostics.reasons))
        return ObjectDecision(False, Reason.POLICY_DENY)
