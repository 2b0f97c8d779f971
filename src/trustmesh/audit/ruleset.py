"""The compiled ruleset: frozen values made once by :mod:`trustmesh.audit.sigma_rules`
and read by the detector. A detection rule is a predicate over one OCSF event dict, the
field values it requires (its index keys), trustmesh's extensions and whether it alerts
on its own; a correlation rule names the detection rules it counts, its group-by fields
per rule (aliases resolved), its window and its condition."""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trustmesh.audit.extensions import Extensions
from trustmesh.audit.matching import Predicate

__all__ = [
    "CorrelationRule",
    "CorrelationType",
    "DetectionRule",
    "RuleInfo",
    "Ruleset",
    "Threshold",
]


@dataclass(frozen=True)
class RuleInfo:
    key: str
    title: str
    level: str
    path: Path
    name: str | None
    description: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class DetectionRule:
    info: RuleInfo
    predicate: Predicate
    constraints: Mapping[str, frozenset[str]]
    extensions: Extensions
    output: bool


class CorrelationType(enum.StrEnum):
    EVENT_COUNT = "event_count"
    VALUE_COUNT = "value_count"
    TEMPORAL = "temporal"
    TEMPORAL_ORDERED = "temporal_ordered"


_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
    "neq": operator.ne,
}


@dataclass(frozen=True)
class Threshold:
    """A correlation condition on a window's measure (count, distinct values or rules)."""

    op: str
    count: int | float

    def holds(self, measure: int) -> bool:
        return _OPS[self.op](measure, self.count)

    @property
    def monotone(self) -> bool:
        """Once true in a window, true for the rest of it: decided at the event that
        makes it true (sliding window). Otherwise decided when the window closes."""
        return self.op in ("gt", "gte")


@dataclass(frozen=True)
class CorrelationRule:
    info: RuleInfo
    type: CorrelationType
    rules: tuple[str, ...]
    group_by: tuple[str, ...]
    #: per referenced rule: the field read for each group-by name (aliases resolved)
    fields: Mapping[str, tuple[str, ...]]
    timespan_ms: int
    threshold: Threshold | None
    #: an extended temporal condition: over the keys of the rules seen in the window
    expression: Callable[[frozenset[str]], bool] | None
    value_field: str | None
    extensions: Extensions


@dataclass(frozen=True)
class Ruleset:
    detections: tuple[DetectionRule, ...]
    correlations: tuple[CorrelationRule, ...]
    files: tuple[Path, ...]
