"""The detector: OCSF events in, alerts out. Pure logic: no I/O, no wall clock; time is
each event's ``time`` (epoch milliseconds).

:meth:`Detector.observe` tests an event against the rules that can match it (rules are
indexed by the reason, class and component their conditions require, so most events
meet few rules), then:

1. a rule that alerts on its own (see :mod:`trustmesh.audit.sigma_rules`) alerts at once,
   unless its ``baseline`` has seen the event's values before or its ``dedup`` has
   alerted for the group within the timespan (:mod:`trustmesh.audit.extensions`);
2. a rule a correlation references feeds the correlation, which alerts once the
   watermark passes (:mod:`trustmesh.audit.correlation`): from a later
   :meth:`~Detector.observe`, from :meth:`~Detector.advance` (the collector's idle tick:
   it passes the event time it has reached) or from :meth:`~Detector.flush`.

Each :class:`Alert` names its rule, level, group, window, the uids of the events that
triggered it and the response actions it asks for, with their targets resolved
(:class:`~trustmesh.audit.extensions.PlannedAction`; all marked dry runs when
``DetectorSettings.dry_run``). :func:`run_rules` runs rules over recorded events in time
order (``trustmesh audit rules test``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from trustmesh.audit.behaviour import MISSING, FirstSeen, LocalTime, WorkingHours
from trustmesh.audit.correlation import Correlator, Firing, Hit
from trustmesh.audit.extensions import PlannedAction, ResponseSpec, plan
from trustmesh.audit.matching import Getter, field_getter, text_of
from trustmesh.audit.ruleset import CorrelationRule, DetectionRule, Ruleset
from trustmesh.audit.sigma_rules import CLASS_FIELD, REASON_FIELD, SERVICE_FIELD, load_ruleset
from trustmesh.errors import ConfigError, UsageError

__all__ = [
    "SHIPPED_RULES",
    "Alert",
    "Detector",
    "DetectorSettings",
    "DetectorStats",
    "ReplayResult",
    "run_rules",
]

#: The ruleset trustmesh ships (package data).
SHIPPED_RULES: Final = Path(__file__).resolve().parent / "rules"
#: The fields rules are indexed by, most selective first.
_INDEXED: Final = (REASON_FIELD, CLASS_FIELD, SERVICE_FIELD)


@dataclass(frozen=True)
class DetectorSettings:
    working_hours: WorkingHours = field(default_factory=WorkingHours)
    #: How late (event time) an event may arrive and still be counted in order; a
    #: correlation is decided once the stream passes its window by this much, so it
    #: bounds the alert latency with the collector's tick (issue 16: < 2 s).
    lateness_ms: int = 1_000
    max_groups: int = 10_000
    max_alert_events: int = 100
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.lateness_ms <= 3_600_000:
            raise ConfigError("detection.lateness: from 0 to 1 hour")
        if self.max_groups < 1 or self.max_alert_events < 1:
            raise ConfigError("detection.max_groups and max_alert_events: at least 1")


class Observer(Protocol):
    """What else sees every event the rules see, in order (the anomaly detector)."""

    @property
    def memory_ms(self) -> int: ...
    def observe(self, event: Mapping[str, Any]) -> list[Alert]: ...
    def advance(self, time_ms: int) -> list[Alert]: ...
    def flush(self) -> list[Alert]: ...


@dataclass(frozen=True)
class Alert:
    uid: str  # stable: the same rule, group and window give the same uid
    rule_id: str
    title: str
    level: str
    kind: str  # "match", or the correlation type
    group: tuple[tuple[str, Hashable], ...]
    event_uids: tuple[str, ...]
    measure: int  # events, distinct values or rules counted (1 for a match)
    window_start: int
    window_end: int
    actions: tuple[PlannedAction, ...]
    rule_path: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "rule_id": self.rule_id,
            "title": self.title,
            "level": self.level,
            "kind": self.kind,
            "group": {name: value for name, value in self.group},
            "event_uids": list(self.event_uids),
            "measure": self.measure,
            "window": {"start": self.window_start, "end": self.window_end},
            "actions": [
                {
                    "action": a.action.value,
                    "target": a.target,
                    "duration_ms": a.duration_ms,
                    "dry_run": a.dry_run,
                    "field": a.field,
                }
                for a in self.actions
            ],
            "rule_path": self.rule_path,
        }


@dataclass(frozen=True)
class DetectorStats:
    events: int
    alerts: int
    matches: Mapping[str, int]
    late: int  # correlated matches too late for their window (counted in the late lane)
    lost: int  # correlated matches too late for the late lane too (counted nowhere)
    forced: int  # held matches released early (buffer full)
    groups_evicted: int
    baseline_evicted: int


def _hashable(value: Any) -> Hashable:
    if value is MISSING:
        return None
    if type(value) is str:
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return value  # type: ignore[no-any-return]


class _Feed:
    """What one detection rule gives one correlation."""

    def __init__(self, index: int, rule: CorrelationRule, key: str, local: LocalTime) -> None:
        self.index, self.rule = index, rule
        self.group = tuple(field_getter(f, local) for f in rule.fields[key])
        self.value = field_getter(rule.value_field, local) if rule.value_field else None
        self.targets: tuple[Getter | int, ...] = tuple(
            rule.group_by.index(s.field)
            if s.field in rule.group_by
            else field_getter(s.field, local)
            for s in rule.extensions.response
        )

    def hit(
        self, event: Mapping[str, Any], time: int, uid: str, rules: tuple[str, ...]
    ) -> Hit | None:
        group = tuple([_hashable(get(event)) for get in self.group])
        if None in group:
            return None  # not correlated without its group
        value = _hashable(self.value(event)) if self.value is not None else None
        targets = tuple([group[t] if isinstance(t, int) else t(event) for t in self.targets])
        return Hit(time, uid, rules, group, value, targets)


class _Rule:
    """A compiled detection rule and its run-time state (dedup, baseline)."""

    def __init__(self, rule: DetectionRule, local: LocalTime, max_groups: int) -> None:
        self.rule, self.info, self.predicate = rule, rule.info, rule.predicate
        self.output = rule.output
        self.feeds: list[_Feed] = []
        ext = rule.extensions
        self.response: tuple[tuple[ResponseSpec, Getter], ...] = tuple(
            (s, field_getter(s.field, local)) for s in ext.response
        )
        self.dedup = ext.dedup
        self.dedup_get = (
            tuple(field_getter(f, local) for f in ext.dedup.group_by) if ext.dedup else ()
        )
        self.silent: OrderedDict[tuple[Hashable, ...], int] = OrderedDict()
        self.max_groups = max_groups
        self.baseline = ext.baseline
        self.baseline_get = (
            tuple(field_getter(f, local) for f in ext.baseline.first_seen) if ext.baseline else ()
        )
        self.first_seen = (
            FirstSeen(ext.baseline.learning_ms, ext.baseline.capacity) if ext.baseline else None
        )

    def alert(self, event: Mapping[str, Any], time: int, uid: str, dry_run: bool) -> Alert | None:
        group: tuple[tuple[str, Hashable], ...] = ()
        end = time
        if self.first_seen is not None and self.baseline is not None:
            key = tuple([_hashable(get(event)) for get in self.baseline_get])
            if None in key or not self.first_seen.is_new(key, time):
                return None
            group = tuple(zip(self.baseline.first_seen, key, strict=True))
        if self.dedup is not None:
            values = tuple([_hashable(get(event)) for get in self.dedup_get])
            until = self.silent.get(values)
            if until is not None and time <= until:
                return None
            end = time + self.dedup.timespan_ms
            self.silent[values] = end
            self.silent.move_to_end(values)
            if len(self.silent) > self.max_groups:
                self.silent.popitem(last=False)
            group = tuple(zip(self.dedup.group_by, values, strict=True))
        actions = tuple(
            a for s, get in self.response if (a := plan(s, get(event), dry_run=dry_run)) is not None
        )
        return _alert(self.rule.info, "match", group, (uid,), 1, time, end, actions)


def _alert(
    info: Any,
    kind: str,
    group: tuple[tuple[str, Hashable], ...],
    uids: tuple[str, ...],
    measure: int,
    start: int,
    end: int,
    actions: tuple[PlannedAction, ...],
) -> Alert:
    digest = hashlib.sha256(repr((info.key, group, start)).encode()).hexdigest()[:32]
    return Alert(
        digest,
        info.key,
        info.title,
        info.level,
        kind,
        group,
        uids,
        measure,
        start,
        end,
        actions,
        str(info.path),
    )


class Detector:
    """Rules compiled once; :meth:`observe` each event (module docstring)."""

    def __init__(
        self,
        ruleset: Ruleset,
        settings: DetectorSettings | None = None,
        *,
        anomalies: Observer | None = None,
    ) -> None:
        """``anomalies``: the behavioural baselines (:mod:`trustmesh.audit.anomaly`),
        shown every event after the rules."""
        self.anomalies = anomalies
        self.settings = settings = settings or DetectorSettings()
        self.ruleset = ruleset
        local = LocalTime(settings.working_hours)
        self._rules = [_Rule(r, local, settings.max_groups) for r in ruleset.detections]
        by_key = {r.info.key: r for r in self._rules}
        for position, correlation in enumerate(ruleset.correlations):
            for key in correlation.rules:
                by_key[key].feeds.append(_Feed(position, correlation, key, local))
        self._correlator = Correlator(
            ruleset.correlations,
            lateness_ms=settings.lateness_ms,
            max_groups=settings.max_groups,
            max_events=settings.max_alert_events,
        )
        index: dict[str, tuple[Getter, dict[str, list[_Rule]], list[_Rule]]] = {}
        always = []
        for rule in self._rules:
            name = next((f for f in _INDEXED if f in rule.rule.constraints), None)
            if name is None:
                always.append(rule)
                continue
            _, buckets, every = index.setdefault(name, (field_getter(name, local), {}, []))
            every.append(rule)
            for value in rule.rule.constraints[name]:
                buckets.setdefault(value, []).append(rule)
        self._index = [index[name] for name in _INDEXED if name in index]
        self._always = tuple(always)
        self._matches: Counter[str] = Counter()
        self._events = self._alerts = 0

    @classmethod
    def from_paths(
        cls, paths: Iterable[str | Path], settings: DetectorSettings | None = None
    ) -> Detector:
        """Load the rule files or directories at ``paths`` (ConfigError naming each
        problem)."""
        settings = settings or DetectorSettings()
        return cls(load_ruleset(paths, LocalTime(settings.working_hours)), settings)

    @classmethod
    def shipped(cls, settings: DetectorSettings | None = None) -> Detector:
        return cls.from_paths([SHIPPED_RULES], settings)

    @property
    def stats(self) -> DetectorStats:
        return DetectorStats(
            events=self._events,
            alerts=self._alerts,
            matches=dict(self._matches),
            late=self._correlator.late,
            lost=self._correlator.lost,
            forced=self._correlator.forced,
            groups_evicted=self._correlator.evicted,
            baseline_evicted=sum(r.first_seen.evicted for r in self._rules if r.first_seen),
        )

    @property
    def memory_ms(self) -> int:
        """How far back in event time the detector's state reaches: its longest
        correlation window, dedup timespan or baseline learning, plus the lateness. A
        detector shown the events of that span again (:meth:`AuditService.warm_start`)
        holds the state it had."""
        spans = [c.timespan_ms for c in self.ruleset.correlations]
        for rule in self._rules:
            if rule.dedup is not None:
                spans.append(rule.dedup.timespan_ms)
            if rule.baseline is not None:
                spans.append(rule.baseline.learning_ms)
        if self.anomalies is not None:
            spans.append(self.anomalies.memory_ms)
        return max(spans, default=0) + self.settings.lateness_ms

    def _candidates(self, event: Mapping[str, Any]) -> list[_Rule]:
        found = list(self._always)
        for get, buckets, every in self._index:
            value = get(event)
            if type(value) is str:
                found.extend(buckets.get(value.lower(), ()))
            elif isinstance(value, list | dict):  # looked up as a whole: every rule may match
                found.extend(every)
            elif (text := text_of(value)) is not None:
                found.extend(buckets.get(text.lower(), ()))
        return found

    def observe(self, event: Mapping[str, Any]) -> list[Alert]:
        """The alerts ``event`` raises now (its own rules', and correlations' the
        watermark has passed)."""
        time = event.get("time")
        if type(time) is not int:
            raise UsageError("an event's time must be epoch milliseconds (an integer)")
        self._events += 1
        metadata = event.get("metadata")
        uid = str(metadata.get("uid", "")) if isinstance(metadata, Mapping) else ""
        alerts: list[Alert] = []
        fed: dict[int, tuple[_Feed, list[str]]] = {}
        dry_run = self.settings.dry_run
        for rule in self._candidates(event):
            if not rule.predicate(event):
                continue
            self._matches[rule.info.key] += 1
            if rule.output and (alert := rule.alert(event, time, uid, dry_run)) is not None:
                alerts.append(alert)
            for feed in rule.feeds:
                fed.setdefault(feed.index, (feed, []))[1].append(rule.info.key)
        correlator = self._correlator
        for index, (feed, keys) in fed.items():
            matched = tuple(k for k in feed.rule.rules if k in keys)
            if (hit := feed.hit(event, time, uid, matched)) is not None:
                correlator.push(index, hit)
        if correlator.windows:
            alerts.extend(self._fired(correlator.advance(time)))
        if self.anomalies is not None:
            alerts.extend(self.anomalies.observe(event))
        self._alerts += len(alerts)
        return alerts

    def advance(self, time_ms: int) -> list[Alert]:
        """The stream has reached ``time_ms`` (no event): the correlations' alerts due."""
        alerts = self._fired(self._correlator.advance(time_ms))
        if self.anomalies is not None:
            alerts.extend(self.anomalies.advance(time_ms))
        self._alerts += len(alerts)
        return alerts

    def flush(self) -> list[Alert]:
        """Every correlation decided now, its open windows closed (end of a replay)."""
        alerts = self._fired(self._correlator.flush())
        if self.anomalies is not None:
            alerts.extend(self.anomalies.flush())
        self._alerts += len(alerts)
        return alerts

    def _fired(self, firings: list[Firing]) -> list[Alert]:
        dry_run = self.settings.dry_run
        alerts = []
        for f in firings:
            rule = f.rule
            actions = tuple(
                a
                for spec, target in zip(rule.extensions.response, f.targets, strict=True)
                if (a := plan(spec, target, dry_run=dry_run)) is not None
            )
            group = tuple(zip(rule.group_by, f.group, strict=True))
            alerts.append(
                _alert(
                    rule.info, rule.type.value, group, f.uids, f.measure, f.start, f.end, actions
                )
            )
        return alerts


@dataclass(frozen=True)
class ReplayResult:
    events: int
    alerts: tuple[Alert, ...]
    matches: Mapping[str, int]


def run_rules(
    paths: Iterable[str | Path],
    events: Iterable[Mapping[str, Any]],
    settings: DetectorSettings | None = None,
) -> ReplayResult:
    """Run the rules at ``paths`` over recorded ``events`` (sorted by time first, so that
    every window is exact) and decide every window at the end."""
    detector = Detector.from_paths(paths, settings)
    ordered = sorted(events, key=lambda e: t if type(t := e.get("time")) is int else 0)
    alerts = [alert for event in ordered for alert in detector.observe(event)]
    alerts.extend(detector.flush())
    stats = detector.stats
    return ReplayResult(stats.events, tuple(alerts), stats.matches)
