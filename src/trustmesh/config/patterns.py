"""Path patterns as the declaration writes them: ``/items/{id}``, ``/files/*``.

One syntax for the ``allow`` items of ``calls`` and the ``paths`` of gateway routes:
literal segments (``[A-Za-z0-9._~-]``), ``{name}`` placeholders (one segment each, each
name once) and a final ``*`` (one or more segments). Where trailing slashes are allowed,
a pattern may end in ``/`` (then only a path with that slash matches it). Matching lives
in :mod:`trustmesh.policy.routes`.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["PARAM_RE", "path_problem", "placeholders"]

_LITERAL_RE: Final = re.compile(r"[A-Za-z0-9._~-]+")
PARAM_RE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def path_problem(path: str, *, trailing_slash: bool = False) -> str | None:
    """What is wrong with the pattern ``path``, or None."""
    if not path.startswith("/"):
        return f"path {path!r} does not start with '/'"
    for char, what in (("?", "a query string"), ("#", "a fragment"), ("%", "percent-encoding")):
        if char in path:
            return f"path {path!r} contains {what} ({char!r})"
    if "\\" in path or ";" in path:
        return f"path {path!r} contains a backslash or ';'"
    if path == "/":
        return None
    segments = path[1:].split("/")
    slashed = trailing_slash and len(segments) > 1 and segments[-1] == ""
    if slashed:
        segments.pop()  # declared: "/orders/" is that very path, slash included
    params: set[str] = set()
    for index, segment in enumerate(segments):
        if not segment:
            return f"path {path!r} has an empty segment"
        if segment in {".", ".."}:
            return f"path {path!r} has a {segment!r} segment"
        if segment == "*":
            if index != len(segments) - 1 or slashed:
                return f"path {path!r} has '*' before its last segment"
            continue
        param = PARAM_RE.fullmatch(segment)
        if param is not None:
            if param.group(1) in params:
                return f"path {path!r} repeats the placeholder {segment}"
            params.add(param.group(1))
        elif _LITERAL_RE.fullmatch(segment) is None:
            return f"path {path!r} has an invalid segment {segment!r}"
    return None


def placeholders(path: str) -> tuple[str, ...]:
    """The placeholder names of a valid pattern, in order."""
    return tuple(m.group(1) for m in map(PARAM_RE.fullmatch, path.split("/")) if m)
