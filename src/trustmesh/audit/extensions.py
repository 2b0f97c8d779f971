"""trustmesh's own rule attributes, beside the Sigma ones, validated into frozen values
when a rule loads (Sigma keeps unknown top-level attributes as custom attributes; these
three are read, any other is left alone as Sigma allows).

``response`` — what to do when the rule alerts: a list of actions, each
``{action, field, duration, dry-run}``:

========================  =======================================  =====================
action                    target (``field``; default)              duration
========================  =======================================  =====================
``revoke-tokens``         a subject (``actor.user.uid``)           —
``lock-user``             a login (``unmapped.trustmesh.           —
                          attributes.login``)
``block-address``         an IP address (``src_endpoint.ip``)      required, at most 30d
``suspend-spiffe-id``     a SPIFFE ID (``unmapped.trustmesh.       optional, at most 30d
                          peer_spiffe_id``)
========================  =======================================  =====================

The target is read from the alert's group when the field is grouped on, else from the
event that triggered the alert; a target that is missing or not of its kind (not an
address, not a SPIFFE ID) plans no action. ``dry-run: true`` plans the action marked as
a dry run (the detector's own ``dry_run`` marks every action so): the collector records
it and does not act.

``dedup`` — ``{group-by: [fields], timespan: 5m}``: a rule that alerts on one event alerts
once per group per timespan (a group is the values of ``group-by``; an absent field is
the value None). A correlation rule needs none: it alerts once per group per window.

``baseline`` — ``{first-seen: [fields], learning: 1h, capacity: 10000}``: the rule alerts
only on an event whose values of ``first-seen`` it has not seen before (see
:class:`~trustmesh.audit.behaviour.FirstSeen`); an event without one of them is skipped.

Durations are Sigma timespans (``30s``, ``15m``, ``1h``, ``7d``).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sigma.correlations import SigmaCorrelationTimespan
from sigma.exceptions import SigmaTimespanError

from trustmesh.errors import UsageError
from trustmesh.spiffeid import parse_spiffe_id

__all__ = [
    "Action",
    "BaselineSpec",
    "Dedup",
    "Extensions",
    "PlannedAction",
    "ResponseSpec",
    "RuleProblem",
    "check_field",
    "parse_extensions",
    "plan",
    "timespan_ms",
]


class RuleProblem(ValueError):
    """A construct of a rule that trustmesh does not evaluate, or a bad value: ``construct``
    names it (``modifier 'expand'``), the message says why."""

    def __init__(self, construct: str, why: str) -> None:
        super().__init__(f"{construct}: {why}")
        self.construct = construct


class Action(enum.StrEnum):
    REVOKE_TOKENS = "revoke-tokens"
    LOCK_USER = "lock-user"
    BLOCK_ADDRESS = "block-address"
    SUSPEND_SPIFFE_ID = "suspend-spiffe-id"


_DEFAULT_FIELD: Final = {
    Action.REVOKE_TOKENS: "actor.user.uid",
    Action.LOCK_USER: "unmapped.trustmesh.attributes.login",
    Action.BLOCK_ADDRESS: "src_endpoint.ip",
    Action.SUSPEND_SPIFFE_ID: "unmapped.trustmesh.peer_spiffe_id",
}
_MAX_ACTION_MS: Final = 30 * 86_400_000
_FIELD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
_MAX_TARGET: Final = 2048
_MAX_CAPACITY: Final = 1_000_000


@dataclass(frozen=True)
class ResponseSpec:
    action: Action
    field: str
    duration_ms: int | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class PlannedAction:
    """One action an alert asks for, with its target resolved."""

    action: Action
    target: str
    duration_ms: int | None
    dry_run: bool
    field: str


@dataclass(frozen=True)
class Dedup:
    group_by: tuple[str, ...]
    timespan_ms: int


@dataclass(frozen=True)
class BaselineSpec:
    first_seen: tuple[str, ...]
    learning_ms: int
    capacity: int


@dataclass(frozen=True)
class Extensions:
    response: tuple[ResponseSpec, ...] = ()
    dedup: Dedup | None = None
    baseline: BaselineSpec | None = None


def check_field(name: object, where: str) -> str:
    """A dotted field path, or a :class:`RuleProblem` naming ``where``."""
    if not isinstance(name, str) or not _FIELD.fullmatch(name) or len(name) > 256:
        raise RuleProblem(where, f"{name!r} is not a dotted field path")
    return name


def timespan_ms(value: object, where: str) -> int:
    """A Sigma timespan (``15m``) in milliseconds, or a :class:`RuleProblem`."""
    try:
        return SigmaCorrelationTimespan(value).seconds * 1000  # type: ignore[arg-type]
    except SigmaTimespanError:
        raise RuleProblem(where, f"{value!r} is not a timespan like 30s, 15m, 1h or 7d") from None


def _fields(value: object, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise RuleProblem(where, "expected a field path or a list of them")
    return tuple(check_field(name, where) for name in names)


def _mapping(value: object, where: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RuleProblem(where, "expected a mapping")
    unknown = sorted(str(k) for k in value if k not in keys)
    if unknown:
        raise RuleProblem(where, f"unknown key(s) {', '.join(unknown)}; expected {sorted(keys)}")
    return value


def _response(value: object) -> tuple[ResponseSpec, ...]:
    if not isinstance(value, list):
        raise RuleProblem("response", "expected a list of actions")
    specs = []
    for i, item in enumerate(value):
        where = f"response[{i}]"
        entry = _mapping(item, where, {"action", "field", "duration", "dry-run"})
        try:
            action = Action(str(entry.get("action")))
        except ValueError:
            raise RuleProblem(
                f"response action {entry.get('action')!r}",
                f"expected one of {', '.join(a.value for a in Action)}",
            ) from None
        field = check_field(entry.get("field", _DEFAULT_FIELD[action]), f"{where}.field")
        duration = entry.get("duration")
        duration_ms = None if duration is None else timespan_ms(duration, f"{where}.duration")
        if action is Action.BLOCK_ADDRESS and duration_ms is None:
            raise RuleProblem(f"{where}.duration", "block-address needs a duration")
        if duration_ms is not None and action not in (
            Action.BLOCK_ADDRESS,
            Action.SUSPEND_SPIFFE_ID,
        ):
            raise RuleProblem(f"{where}.duration", f"{action.value} takes no duration")
        if duration_ms is not None and duration_ms > _MAX_ACTION_MS:
            raise RuleProblem(f"{where}.duration", "at most 30d")
        dry_run = entry.get("dry-run", False)
        if not isinstance(dry_run, bool):
            raise RuleProblem(f"{where}.dry-run", "expected true or false")
        specs.append(ResponseSpec(action, field, duration_ms, dry_run))
    return tuple(specs)


def parse_extensions(attributes: Mapping[str, Any], *, correlation: bool) -> Extensions:
    """The ``response``, ``dedup`` and ``baseline`` attributes of a rule, validated."""
    response = _response(attributes["response"]) if "response" in attributes else ()
    dedup = baseline = None
    if "dedup" in attributes:
        if correlation:
            raise RuleProblem("dedup", "a correlation alerts once per group and window already")
        entry = _mapping(attributes["dedup"], "dedup", {"group-by", "timespan"})
        group_by = (
            _fields(entry.get("group-by", []), "dedup.group-by") if entry.get("group-by") else ()
        )
        dedup = Dedup(group_by, timespan_ms(entry.get("timespan"), "dedup.timespan"))
    if "baseline" in attributes:
        if correlation:
            raise RuleProblem("baseline", "not evaluated on a correlation rule")
        entry = _mapping(attributes["baseline"], "baseline", {"first-seen", "learning", "capacity"})
        capacity = entry.get("capacity", 10_000)
        if type(capacity) is not int or not 1 <= capacity <= _MAX_CAPACITY:
            raise RuleProblem("baseline.capacity", f"a whole number from 1 to {_MAX_CAPACITY}")
        baseline = BaselineSpec(
            _fields(entry.get("first-seen"), "baseline.first-seen"),
            timespan_ms(entry.get("learning", "1h"), "baseline.learning"),
            capacity,
        )
    return Extensions(response, dedup, baseline)


def _target(action: Action, value: object) -> str | None:
    """``value`` as the target of ``action``, or None if it cannot be one."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not text or len(text) > _MAX_TARGET or not text.isprintable():
        return None
    if action is Action.BLOCK_ADDRESS:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return None
    if action is Action.SUSPEND_SPIFFE_ID:
        try:
            parse_spiffe_id(text)
        except UsageError:
            return None
    return text


def plan(spec: ResponseSpec, value: object, *, dry_run: bool) -> PlannedAction | None:
    """The action ``spec`` asks for on ``value``; None when ``value`` is no target."""
    target = _target(spec.action, value)
    if target is None:
        return None
    return PlannedAction(spec.action, target, spec.duration_ms, spec.dry_run or dry_run, spec.field)
