"""Path patterns (``/charges/{id}``, ``/items/*``) matched segment by segment, and the
operations of a gateway route (:class:`Operations`) matched to one template.

``{name}`` matches exactly one non-empty segment; a final ``*`` matches one or more
segments; every other segment, the empty one after a final ``/`` included, matches
itself literally. Matching runs on the canonical, decoded path
(:func:`trustmesh.policy.paths.canonical_path`), whose segments cannot hide a ``/``, so
a pattern means the same thing to every component.

Where several templates match one path, the most specific wins, read from the left: a
literal segment before a placeholder before ``*`` (as OpenAPI matches concrete paths
before templated ones); the declaration refuses two templates of the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trustmesh.reasons import Reason

__all__ = ["Operations", "Pattern", "TemplateMatch"]


@dataclass(frozen=True)
class Pattern:
    text: str
    segments: tuple[str, ...]
    #: per segment, the placeholder's name (None: a literal or ``*``), read once at load
    names: tuple[str | None, ...]

    @classmethod
    def parse(cls, text: str) -> Pattern:
        segments = tuple(text[1:].split("/")) if text != "/" else ()
        return cls(text, segments, tuple(s[1:-1] if _is_param(s) else None for s in segments))

    def matches(self, path: str) -> bool:
        return self.bind(_parts(path)) is not None

    def bind(self, parts: list[str]) -> tuple[tuple[str, str], ...] | None:
        """The placeholders' values if the path (its segments) matches, else None."""
        pattern, names = self.segments, self.names
        if pattern and pattern[-1] == "*":
            size = len(pattern) - 1
            if len(parts) <= size or not all(parts[size:]):
                return None
            return _match_all(pattern[:size], names, parts[:size])
        if len(parts) != len(pattern):
            return None
        return _match_all(pattern, names, parts)

    @property
    def specificity(self) -> tuple[int, ...]:
        """Sorts the most specific first: per segment, literal < placeholder < ``*``."""
        return tuple(2 if s == "*" else 1 if _is_param(s) else 0 for s in self.segments)


def _parts(path: str) -> list[str]:
    return path[1:].split("/") if path != "/" else []


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _match_all(
    pattern: tuple[str, ...], names: tuple[str | None, ...], parts: list[str]
) -> tuple[tuple[str, str], ...] | None:
    bound: list[tuple[str, str]] = []
    for want, name, got in zip(pattern, names, parts, strict=False):
        if name is not None:
            if not got:
                return None
            bound.append((name, got))
        elif want != got:
            return None
    return tuple(bound)


@dataclass(frozen=True)
class TemplateMatch:
    """The operation a path is: ``route-matched`` with its template and the values of its
    placeholders; ``method-not-allowed`` (the template's methods); ``path-non-canonical``
    (a trailing ``/`` no template declares); or ``route-not-found``."""

    reason: Reason
    template: str = ""
    params: tuple[tuple[str, str], ...] = ()
    allowed_methods: tuple[str, ...] = ()


_NOT_FOUND = TemplateMatch(Reason.ROUTE_NOT_FOUND)
_TRAILING_SLASH = TemplateMatch(Reason.PATH_NON_CANONICAL)


class Operations:
    """A route's operations, ``(method, template)`` pairs, compiled once."""

    def __init__(self, operations: Iterable[tuple[str, str]]) -> None:
        methods: dict[str, list[str]] = {}
        for method, template in operations:
            methods.setdefault(template, []).append(method)
        compiled = [(Pattern.parse(t), tuple(m)) for t, m in methods.items()]
        compiled.sort(key=lambda item: item[0].specificity)
        self._templates = tuple(compiled)

    def match(self, method: str, path: str) -> TemplateMatch:
        """``path`` must be canonical. The most specific template that matches owns the
        path, whatever the method."""
        parts = _parts(path)
        for pattern, methods in self._templates:
            params = pattern.bind(parts)
            if params is None:
                continue
            if method in methods:
                return TemplateMatch(Reason.ROUTE_MATCHED, pattern.text, params)
            return TemplateMatch(Reason.METHOD_NOT_ALLOWED, allowed_methods=methods)
        return _TRAILING_SLASH if len(path) > 1 and path.endswith("/") else _NOT_FOUND
