"""Sigma rule files, parsed with pySigma, validated and compiled into a :class:`Ruleset`.

Loading decides, once, everything the detector will not re-check per event:

* **Files**: each path is a rule file or a directory whose ``*.yml`` / ``*.yaml`` files
  (recursively, sorted) are read; at most 1 MiB each, YAML read safely with duplicate keys
  refused. A file may hold several documents (Sigma's ``action: global`` collections and
  correlation rules included). Rules reference each other across files.
* **Identity**: every rule has an ``id`` or a ``name`` (its key in alerts: the id when it
  has one); keys and names are unique.
* **Log source**: ``product`` is ``trustmesh`` (or absent); ``service`` is the emitting
  component, matched case-insensitively against ``metadata.product.feature.name``;
  ``category`` is the OCSF event class in snake case (:data:`CATEGORIES`:
  ``authentication`` is class_uid 3002, ``api_activity`` 6003…).
* **Refused**, with the file, the rule and the construct named (a
  :class:`~trustmesh.errors.ConfigError` carrying every problem found): an unknown
  modifier and the ones not evaluated (``expand``, ``wide``, ``utf16``, ``utf16be``); a
  condition pySigma cannot parse (the deprecated ``| count()`` pipe included); a value of
  ``unmapped.trustmesh.reason`` or ``status_detail`` that is not a code of
  :mod:`trustmesh.reasons`; Sigma filters; correlation types other than ``event_count``,
  ``value_count``, ``temporal`` and ``temporal_ordered``; a correlation of correlations;
  ``not`` in an extended temporal condition; a temporal_ordered condition other than all
  rules in order; a bad ``response``, ``dedup`` or ``baseline`` (see
  :mod:`trustmesh.audit.extensions`).
* **Output**: a rule referenced by a correlation without ``generate: true`` raises no
  alert of its own (as pySigma decides it), it only feeds the correlation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, cast

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import (
    CorrelationConditionAND,
    CorrelationConditionOR,
    SigmaCorrelationCondition,
    SigmaCorrelationRule,
    SigmaExtendedCorrelationCondition,
    SigmaRuleReference,
)
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.modifiers import (
    SigmaExpandModifier,
    SigmaUTF16BEModifier,
    SigmaUTF16Modifier,
    SigmaWideModifier,
)
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaLogSource, SigmaRule
from sigma.rule.base import SigmaYAMLLoader

from trustmesh import reasons
from trustmesh.audit.behaviour import LocalTime
from trustmesh.audit.extensions import RuleProblem, check_field, parse_extensions
from trustmesh.audit.matching import (
    Predicate,
    all_of,
    any_of,
    compile_condition,
    constraints,
    field_getter,
)
from trustmesh.audit.ruleset import (
    CorrelationRule,
    CorrelationType,
    DetectionRule,
    RuleInfo,
    Ruleset,
    Threshold,
)
from trustmesh.errors import ConfigError
from trustmesh.events import EventClass

__all__ = [
    "CATEGORIES",
    "CLASS_FIELD",
    "REASON_FIELD",
    "SERVICE_FIELD",
    "load_ruleset",
    "rule_files",
]

CLASS_FIELD: Final = "class_uid"
SERVICE_FIELD: Final = "metadata.product.feature.name"
REASON_FIELD: Final = "unmapped.trustmesh.reason"
#: Sigma ``logsource.category`` → OCSF class_uid.
CATEGORIES: Final = {cls.class_name.lower().replace(" ", "_"): int(cls) for cls in EventClass}
_REFUSED_MODIFIERS: Final = {
    SigmaExpandModifier: "expand",
    SigmaWideModifier: "wide",
    SigmaUTF16Modifier: "utf16",
    SigmaUTF16BEModifier: "utf16be",
}
_MAX_FILE: Final = 1 << 20
_LEVELS: Final = ("informational", "low", "medium", "high", "critical")


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """The rule files named: each file, and each directory's ``*.yml``/``*.yaml``."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"detection.rules: {path}: no such file or directory")
    return files


def _read(path: Path, problems: list[str]) -> SigmaCollection | None:
    try:
        raw = path.read_bytes()
        if len(raw) > _MAX_FILE:
            problems.append(f"{path}: larger than {_MAX_FILE} bytes")
            return None
        documents = list(yaml.load_all(raw.decode("utf-8"), Loader=SigmaYAMLLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{path}: not a readable YAML file ({exc})")
        return None
    if not all(doc is None or isinstance(doc, dict) for doc in documents):
        problems.append(f"{path}: every YAML document must be a mapping (a Sigma rule)")
        return None
    collection = SigmaCollection.from_dicts(
        documents,
        collect_errors=True,
        source=SigmaRuleLocation(path),
        collect_filters=True,
        resolve_references=False,
    )
    problems.extend(f"{path}: {_message(e)}" for e in collection.errors)
    for sigma_filter in collection.filters:
        problems.append(f"{path}: filter {sigma_filter.title!r}: Sigma filters are not evaluated")
    return collection


def _message(error: SigmaError) -> str:
    return str(error.args[0]) if error.args else type(error).__name__


def _info(rule: SigmaRule | SigmaCorrelationRule, path: Path) -> RuleInfo:
    key = str(rule.id) if rule.id is not None else rule.name
    if key is None:
        raise RuleProblem("id", "a rule needs an id or a name")
    level = rule.level.name.lower() if rule.level is not None else "medium"
    return RuleInfo(
        key=key,
        title=rule.title or key,
        level=level if level in _LEVELS else "medium",
        path=path,
        name=rule.name,
        description=rule.description,
        tags=tuple(str(tag) for tag in rule.tags),
    )


def _items(detection: SigmaDetection) -> Iterable[SigmaDetectionItem]:
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            yield from _items(item)
        else:
            yield item


def _check_reasons(node: Any) -> None:
    """Every exact reason a condition names is a code of the vocabulary."""
    field = getattr(node, "field", None)
    if field in (REASON_FIELD, "status_detail"):
        value = node.value
        if hasattr(value, "s") and all(isinstance(p, str) for p in value.s):
            text = "".join(value.s).lower()
            try:
                reasons.parse(text)
            except ValueError:
                raise RuleProblem(
                    f"value {text!r} of {field}", "not a code of trustmesh.reasons"
                ) from None
    for arg in getattr(node, "args", ()):
        _check_reasons(arg)


def _logsource(
    source: SigmaLogSource, local: LocalTime
) -> tuple[list[Predicate], dict[str, frozenset[str]]]:
    predicates: list[Predicate] = []
    required: dict[str, frozenset[str]] = {}
    if source.product is not None and source.product.lower() != "trustmesh":
        raise RuleProblem(
            f"logsource product {source.product!r}", "trustmesh collects product 'trustmesh' only"
        )
    if source.category is not None:
        uid = CATEGORIES.get(source.category.lower())
        if uid is None:
            raise RuleProblem(
                f"logsource category {source.category!r}",
                f"expected an OCSF class: {', '.join(sorted(CATEGORIES))}",
            )
        predicates.append(lambda event: event.get(CLASS_FIELD) == uid)
        required[CLASS_FIELD] = frozenset({str(uid)})
    if source.service is not None:
        service, get = source.service.lower(), field_getter(SERVICE_FIELD, local)
        predicates.append(lambda event: isinstance(s := get(event), str) and s.lower() == service)
        required[SERVICE_FIELD] = frozenset({service})
    return predicates, required


def _detection(rule: SigmaRule, info: RuleInfo, local: LocalTime) -> DetectionRule:
    for item in (i for d in rule.detection.detections.values() for i in _items(d)):
        for modifier in item.modifiers:
            if modifier in _REFUSED_MODIFIERS:
                raise RuleProblem(
                    f"modifier {_REFUSED_MODIFIERS[modifier]!r}", "not evaluated by trustmesh"
                )
    predicates, required = _logsource(rule.logsource, local)
    trees = []
    for sigma_condition in rule.detection.parsed_condition:
        try:
            trees.append(sigma_condition.parse())
        except SigmaError as exc:
            text = sigma_condition.condition
            raise RuleProblem(f"condition {text!r}", _message(exc)) from None
    for tree in trees:
        _check_reasons(tree)
    condition = any_of([compile_condition(tree, local) for tree in trees])
    found = [constraints(tree) for tree in trees]
    common = set(found[0]).intersection(*found[1:])
    for name in common:  # one of the conditions holds: the union of their values
        required.setdefault(name, frozenset().union(*(f[name] for f in found)))
    extensions = parse_extensions(rule.custom_attributes, correlation=False)
    return DetectionRule(info, all_of([*predicates, condition]), required, extensions, True)


def _expression(node: Any, keys: Mapping[str, str]) -> Callable[[frozenset[str]], bool]:
    if isinstance(node, SigmaRuleReference):
        key = keys[node.reference]
        return lambda seen: key in seen
    parts = [_expression(arg, keys) for arg in node.args]
    if isinstance(node, CorrelationConditionAND):
        return lambda seen: all(p(seen) for p in parts)
    if isinstance(node, CorrelationConditionOR):
        return lambda seen: any(p(seen) for p in parts)
    raise RuleProblem("extended condition 'not'", "the absence of a rule is not evaluated")


def _correlation(
    rule: SigmaCorrelationRule, info: RuleInfo, by_ref: Mapping[str, DetectionRule | None]
) -> CorrelationRule:
    try:
        kind = CorrelationType(rule.type.name.lower())
    except ValueError:
        raise RuleProblem(f"correlation type {rule.type.name.lower()!r}", "not evaluated") from None
    condition = rule.condition
    extended = isinstance(condition, SigmaExtendedCorrelationCondition)
    references = (
        cast(SigmaExtendedCorrelationCondition, condition).get_referenced_rules()
        if rule.rules is None
        else [r.reference for r in rule.rules]
    )
    keys: dict[str, str] = {}
    for reference in references:
        if reference not in by_ref:
            raise RuleProblem(f"correlation rule reference {reference!r}", "no such rule loaded")
        target = by_ref[reference]
        if target is None:
            raise RuleProblem(
                f"correlation rule reference {reference!r}",
                "a correlation of correlations is not evaluated",
            )
        if target.extensions.baseline is not None:
            raise RuleProblem(
                f"correlation rule reference {reference!r}", "a baseline rule feeds no correlation"
            )
        keys[reference] = target.info.key
    group_by = tuple(check_field(g, "correlation group-by") for g in rule.group_by or ())
    aliases = {a.alias: {ref.reference: f for ref, f in a.mapping.items()} for a in rule.aliases}
    fields: dict[str, tuple[str, ...]] = {}
    for reference, key in keys.items():
        row = []
        for name in group_by:
            mapped = aliases.get(name, {}).get(reference, None if name in aliases else name)
            if mapped is None:
                raise RuleProblem(f"alias {name!r}", f"names no field for rule {reference!r}")
            row.append(check_field(mapped, f"alias {name!r}"))
        fields[key] = tuple(row)
    threshold = expression = value_field = None
    if extended:
        if kind is not CorrelationType.TEMPORAL:
            raise RuleProblem(f"extended condition of {kind.value}", "not evaluated")
        tree = cast(SigmaExtendedCorrelationCondition, condition).parsed
        expression = _expression(tree, keys)
    else:
        plain = cast(SigmaCorrelationCondition, condition)
        threshold = Threshold(plain.op.name.lower(), plain.count)
        if kind is CorrelationType.VALUE_COUNT:
            if not isinstance(plain.fieldref, str):
                raise RuleProblem("condition field", "value_count counts the values of one field")
            value_field = check_field(plain.fieldref, "condition field")
        elif plain.fieldref is not None:
            raise RuleProblem("condition field", f"{kind.value} counts no field")
        if kind is CorrelationType.TEMPORAL_ORDERED and threshold != Threshold("gte", len(keys)):
            raise RuleProblem("temporal_ordered condition", "only every rule, in order")
    extensions = parse_extensions(rule.custom_attributes, correlation=True)
    return CorrelationRule(
        info,
        kind,
        tuple(keys.values()),
        group_by,
        fields,
        rule.timespan.seconds * 1000,
        threshold,
        expression,
        value_field,
        extensions,
    )


def load_ruleset(paths: Iterable[str | Path], local: LocalTime) -> Ruleset:
    """Read, validate and compile the rules at ``paths`` (ConfigError naming every
    problem: file, rule and construct)."""
    files = rule_files(paths)
    problems: list[str] = []
    parsed: list[tuple[SigmaRule | SigmaCorrelationRule, Path]] = []
    for path in files:
        collection = _read(path, problems)
        if collection is not None:
            parsed.extend((r, path) for r in collection.rules if not r.errors)
    detections: list[DetectionRule] = []
    by_ref: dict[str, DetectionRule | None] = {}
    correlations: list[tuple[SigmaCorrelationRule, RuleInfo]] = []
    for rule, path in parsed:
        try:
            info = _info(rule, path)
            if info.key in by_ref or (rule.name is not None and rule.name in by_ref):
                raise RuleProblem(f"id {info.key!r}", "another rule has this id or name")
            if isinstance(rule, SigmaCorrelationRule):
                correlations.append((rule, info))
                compiled = None
            else:
                compiled = _detection(rule, info, local)
                detections.append(compiled)
            by_ref[info.key] = compiled
            if rule.name is not None:
                by_ref[rule.name] = compiled
        except (RuleProblem, SigmaError) as exc:
            problems.append(f"{path}: rule {rule.title!r}: {exc}")
    built: list[CorrelationRule] = []
    for rule, info in correlations:
        try:
            built.append(_correlation(rule, info, by_ref))
        except RuleProblem as exc:
            problems.append(f"{info.path}: rule {info.title!r}: {exc}")
    if problems:
        raise ConfigError(
            f"{len(problems)} problem(s) in the detection rules: {problems[0]}",
            problems=tuple(problems),
        )
    silent = {key for rule, info in correlations if not rule.generate for key in _refs(built, info)}
    detections = [
        DetectionRule(d.info, d.predicate, d.constraints, d.extensions, d.info.key not in silent)
        for d in detections
    ]
    return Ruleset(tuple(detections), tuple(built), tuple(files))


def _refs(built: list[CorrelationRule], info: RuleInfo) -> tuple[str, ...]:
    return next(c.rules for c in built if c.info is info)
