"""Path patterns (``/charges/{id}``, ``/items/*``) matched segment by segment.

``{name}`` matches exactly one non-empty segment; a final ``*`` matches one or more
segments; every other segment matches itself literally. Matching runs on the canonical,
decoded path (:func:`trustmesh.policy.paths.canonical_path`), whose segments cannot hide
a ``/``, so a pattern means the same thing to every component.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Pattern"]


@dataclass(frozen=True)
class Pattern:
    text: str
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pattern:
        segments = tuple(text[1:].split("/")) if text != "/" else ()
        return cls(text, segments)

    def matches(self, path: str) -> bool:
        parts = path[1:].split("/") if path != "/" else []
        pattern = self.segments
        if pattern and pattern[-1] == "*":
            head = pattern[:-1]
            return (
                len(parts) > len(head)
                and all(p for p in parts[len(head) :])
                and _match_all(head, parts[: len(head)])
            )
        return len(parts) == len(pattern) and _match_all(pattern, parts)


def _match_all(pattern: tuple[str, ...], parts: list[str]) -> bool:
    for want, got in zip(pattern, parts, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return False
        elif want != got:
            return False
    return True
