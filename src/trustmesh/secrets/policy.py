"""Who may do what on which path: Vault's path ACLs, compiled once from the
declaration's ``secrets.policies``.

A pattern matches a request path whole: ``+`` stands for exactly one segment, a final
``*`` for any rest (also within the last segment). Every pattern that matches counts:
``deny`` in any of them refuses, otherwise the capabilities are their union (an identity
with no matching pattern has none: the default is deny).

A request path is taken as the client sent it or not at all: an empty, ``.`` or ``..``
segment, a percent-encoded byte or any character outside ``[A-Za-z0-9._~@:=,+-]`` is
refused — never normalised into another path that a pattern might then match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from trustmesh.errors import UsageError

__all__ = ["Acl", "check_path", "operation_capability"]

_PATH_RE: Final = re.compile(r"[A-Za-z0-9._~@:=,+-]+(/[A-Za-z0-9._~@:=,+-]+)*/?")
MAX_PATH: Final = 1024


def check_path(path: str) -> str:
    """``path`` (after ``/v1/``) if it is one a client may name; UsageError otherwise."""
    if not path or len(path) > MAX_PATH or _PATH_RE.fullmatch(path) is None:
        raise UsageError(
            "invalid path: use segments of [A-Za-z0-9._~@:=,+-] separated by single '/' "
            "(no encoded characters)"
        )
    if any(segment in (".", "..") for segment in path.split("/")):
        raise UsageError("invalid path: '.' and '..' segments are refused")
    return path


def operation_capability(method: str, exists: bool) -> str:
    """The capability an HTTP method needs (a write to a path that does not exist yet
    is ``create``, else ``update``)."""
    if method in ("GET", "HEAD"):
        return "read"
    if method == "LIST":
        return "list"
    if method == "DELETE":
        return "delete"
    if method == "PATCH":
        return "patch"
    return "update" if exists else "create"


def _compile(pattern: str) -> re.Pattern[str]:
    rest = pattern.endswith("*")
    body = pattern[:-1] if rest else pattern
    parts = ["[^/]+" if segment == "+" else re.escape(segment) for segment in body.split("/")]
    return re.compile("/".join(parts) + (".*" if rest else ""), re.DOTALL)


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    capabilities: frozenset[str]


class Acl:
    """One identity's grants: ``{pattern: capabilities}``."""

    def __init__(self, grants: Mapping[str, Sequence[str]]) -> None:
        self._rules = tuple(
            _Rule(pattern, _compile(pattern), frozenset(caps)) for pattern, caps in grants.items()
        )

    def capabilities(self, path: str) -> frozenset[str]:
        """What this identity may do on ``path`` (empty where it may do nothing)."""
        found: set[str] = set()
        for rule in self._rules:
            if rule.regex.fullmatch(path):
                if "deny" in rule.capabilities:
                    return frozenset()
                found |= rule.capabilities
        return frozenset(found)

    def denies(self, path: str) -> bool:
        """Whether a pattern matching ``path`` says ``deny``."""
        return any("deny" in r.capabilities and r.regex.fullmatch(path) for r in self._rules)

    def allows(self, path: str, capability: str) -> bool:
        return capability in self.capabilities(path)

    @property
    def empty(self) -> bool:
        return not self._rules
