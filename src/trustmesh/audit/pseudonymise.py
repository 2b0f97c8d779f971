"""Pseudonyms for the people and addresses in events and alerts, before they leave for a
SIEM that should not learn who did what, yet must still tell one person from another.

A value becomes ``pseud:`` and 26 base32 characters (130 bits) of
HMAC-SHA256(key, value): the same value gives the same pseudonym under one key —
wherever it appears, so a user is followed from ``actor.user.uid`` to an alert's group
— and nothing without the key (the key is at least 32 bytes: no dictionary of user
names or IPv4 addresses can be hashed to reverse it). Rotating the key unlinks what was
exported before from what is exported after.

What is replaced (the principal and where they came from):

- ``actor.user`` and ``user`` — every string inside (uid, name, email…);
- ``src_endpoint.ip`` and ``src_endpoint.hostname``;
- ``unmapped.trustmesh.sub`` and, in ``unmapped.trustmesh.attributes``, ``username``,
  ``login``, ``user``, ``user_name``, ``email`` and ``by`` (who did an admin change);
- in an alert: the group values and action targets of those fields.

What is kept: SPIFFE IDs and OAuth ``client_id`` (they name workloads and
applications, which the analyst needs, not people), the destination (the service),
ids (``uid``, ``jti``, ``trace_id``: random, and needed to join records) and the
``message`` (trustmesh's messages are fixed text: the variable parts are fields).

The input is never modified: a changed deep copy is returned.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from trustmesh.errors import ConfigError

__all__ = ["FIELDS", "MIN_KEY_BYTES", "PREFIX", "Pseudonymiser"]

#: The shortest key accepted.
MIN_KEY_BYTES: Final = 32
#: What every pseudonym starts with.
PREFIX: Final = "pseud:"
_CONTEXT: Final = b"trustmesh pseudonym v1\x00"
_CACHE_SIZE: Final = 65_536
_PERSON_ATTRIBUTES: Final = frozenset({"username", "login", "user", "user_name", "email", "by"})
#: Fields (dotted OCSF paths) whose value is a person or their address; a path ending
#: in ``.`` covers everything below it.
FIELDS: Final = (
    "actor.user.",
    "user.",
    "src_endpoint.ip",
    "src_endpoint.hostname",
    "unmapped.trustmesh.sub",
    *(f"unmapped.trustmesh.attributes.{name}" for name in sorted(_PERSON_ATTRIBUTES)),
)


def _copy(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars): far cheaper than
    ``copy.deepcopy``, which handles every type and cycle."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _covered(path: str) -> bool:
    return any(path == f or (f.endswith(".") and path.startswith(f)) for f in FIELDS)


class Pseudonymiser:
    """Replaces principals and source addresses with keyed pseudonyms (module
    docstring). ``key``: at least 32 random bytes, kept like any other secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"a pseudonymisation key is at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._cache: dict[str, str] = {}  # the same few principals recur in a stream

    def __repr__(self) -> str:
        return "Pseudonymiser(key=<withheld>)"

    def token(self, value: str) -> str:
        """The pseudonym of ``value`` (a pseudonym is returned as it is: applying
        twice changes nothing)."""
        if value.startswith(PREFIX):
            return value
        token = self._cache.get(value)
        if token is None:
            mac = hmac.new(self._key, _CONTEXT + value.encode(), hashlib.sha256).digest()
            token = PREFIX + base64.b32encode(mac).decode("ascii")[:26].lower()
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[value] = token
        return token

    def _replace(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.token(value)
        if isinstance(value, dict):
            return {k: self._replace(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._replace(v) for v in value]
        return value  # numbers, booleans, None: no one's name

    def event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the OCSF ``event`` with its principals pseudonymised."""
        out: dict[str, Any] = _copy(dict(event))
        actor = out.get("actor")
        if isinstance(actor, dict) and "user" in actor:
            actor["user"] = self._replace(actor["user"])
        if "user" in out:
            out["user"] = self._replace(out["user"])
        src = out.get("src_endpoint")
        if isinstance(src, dict):
            for key in ("ip", "hostname"):
                if isinstance(src.get(key), str):
                    src[key] = self.token(src[key])
        unmapped = out.get("unmapped")
        mine = unmapped.get("trustmesh") if isinstance(unmapped, dict) else None
        if isinstance(mine, dict):
            if isinstance(mine.get("sub"), str):
                mine["sub"] = self.token(mine["sub"])
            attributes = mine.get("attributes")
            if isinstance(attributes, dict):
                for key in _PERSON_ATTRIBUTES & attributes.keys():
                    if isinstance(attributes[key], str):
                        attributes[key] = self.token(attributes[key])
        return out

    def alert(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of an alert (``Alert.to_dict()`` or ``StoredAlert.to_dict()``) whose
        group values and action targets of pseudonymised fields are pseudonymised."""
        out: dict[str, Any] = _copy(dict(alert))
        group = out.get("group")
        if isinstance(group, dict):
            for key, value in group.items():
                if _covered(key) and isinstance(value, str):
                    group[key] = self.token(value)
        for action in out.get("actions") or ():
            if not isinstance(action, dict) or not isinstance(action.get("target"), str):
                continue
            if _covered(str(action.get("field", ""))):
                action["target"] = self.token(action["target"])
        return out
