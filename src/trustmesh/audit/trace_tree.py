"""One trace's spans in tree order, for a reader: each with its depth, walked without
recursion. A span id reported twice is placed once (its first); spans whose parent is
not recorded, and spans whose parents make a loop (a workload may report any parent
id), are placed at the top and marked ``orphan``. ``trustmesh audit trace`` and the
console both draw from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Placed", "in_tree_order", "nanoseconds"]


@dataclass(frozen=True)
class Placed:
    depth: int
    span: Mapping[str, Any]
    orphan: bool


def nanoseconds(value: object) -> int:
    return value if type(value) is int else 0


def _start(span: Mapping[str, Any]) -> int:
    return nanoseconds(span.get("start_ns"))


def in_tree_order(spans: Sequence[Mapping[str, Any]]) -> list[Placed]:
    by_id: dict[str, Mapping[str, Any]] = {}
    for span in spans:
        by_id.setdefault(str(span.get("span_id")), span)
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for span in by_id.values():
        parent = span.get("parent_span_id")
        children.setdefault(parent if parent in by_id else None, []).append(span)
    placed: list[Placed] = []
    seen: set[str] = set()

    def walk(top: Mapping[str, Any], orphan: bool) -> None:
        pending = [(0, top, orphan)]
        while pending:
            depth, span, lonely = pending.pop()
            span_id = str(span.get("span_id"))
            if span_id in seen:
                continue
            seen.add(span_id)
            placed.append(Placed(depth, span, lonely))
            below = sorted(children.get(span_id, ()), key=_start)
            pending.extend((depth + 1, child, False) for child in reversed(below))

    for span in sorted(children.get(None, ()), key=_start):
        walk(span, span.get("parent_span_id") is not None)
    for span in sorted(by_id.values(), key=_start):
        if str(span.get("span_id")) not in seen:  # in a loop of parents
            walk(span, True)
    return placed
