"""A Sigma detection, compiled once into a Python predicate over an OCSF event dict.

What a condition means on one event (trustmesh's reading of Sigma 2):

* **Fields** are dotted OCSF paths (``unmapped.trustmesh.reason``); a key that itself
  holds dots (an attribute ``a.b``) is found too. ``derived.*`` fields: see
  :mod:`trustmesh.audit.behaviour`. A field whose value is a list matches if an element
  does. An absent field and a JSON null match only ``null`` (and ``exists: false``).
* **Strings** match case-insensitively (``cased``: exactly) the whole value, with ``*``
  (any run) and ``?`` (one character) wildcards and ``\\`` escapes; ``contains``,
  ``startswith``, ``endswith`` add the wildcards; ``windash`` and ``base64offset`` expand a
  value into alternatives, ``base64`` encodes it. An integer or boolean event value is
  compared as its text (``3002``, ``true``).
* **Numbers** match an equal number (or its text); ``lt lte gt gte`` compare with a number
  (never a string or a boolean). **Booleans** match a boolean.
* ``re`` searches (unanchored) with Python's ``re``; ``i``, ``m``, ``s`` are its flags.
  ``cidr`` matches an IPv4 or IPv6 address in the network (an IPv4-mapped IPv6 address as
  its IPv4). ``fieldref`` compares with another field of the same event (strings
  case-insensitively; with ``contains``/``startswith``/``endswith`` as a substring).
  ``minute hour day week month year`` read a field of epoch milliseconds in the
  detector's timezone.
* A value list is OR (``all``: AND); a map is AND; a list of maps is OR; ``neq`` negates
  an item. A **keyword** (a value without a field) matches if any string or number
  anywhere in the event does.
* Conditions: ``and``, ``or``, ``not``, parentheses, ``1 of x*``, ``all of x*``,
  ``1 of them``, ``all of them``; a rule with several conditions matches if one does.

Anything else (``expand`` placeholders, UTF-16 modifiers, a value type not listed) raises
:class:`~trustmesh.audit.extensions.RuleProblem` at compile time, naming the construct.

:func:`constraints` finds what a condition requires of a few fields (the values a field
must take), so that the detector tests an event only against rules that can match it.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SigmaTimestampPart,
    SigmaType,
    SpecialChars,
)

from trustmesh.audit.behaviour import MISSING, LocalTime
from trustmesh.audit.extensions import RuleProblem

__all__ = [
    "Getter",
    "Predicate",
    "all_of",
    "any_of",
    "compile_condition",
    "constraints",
    "field_getter",
    "text_of",
]

Predicate = Callable[[Mapping[str, Any]], bool]
Getter = Callable[[Mapping[str, Any]], Any]
_Match = Callable[[Any], bool]
_MULTI, _SINGLE = SpecialChars.WILDCARD_MULTI, SpecialChars.WILDCARD_SINGLE
_COMPARE: Final = {
    CompareOperators.LT: operator.lt,
    CompareOperators.LTE: operator.le,
    CompareOperators.GT: operator.gt,
    CompareOperators.GTE: operator.ge,
    CompareOperators.NEQ: operator.ne,
}
_MAX_KEYWORD_DEPTH: Final = 8


def text_of(value: object) -> str | None:
    """An event value as Sigma compares it with a string: a string itself, an integer
    (or a whole float) as its digits, a boolean as ``true``/``false``; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def field_getter(path: str, local: LocalTime) -> Getter:
    """The lookup of a dotted ``path`` in an event: its value, or MISSING."""
    if path.startswith("derived."):
        try:
            return local.getter(path)
        except KeyError:
            raise RuleProblem(f"field {path!r}", "not a derived field") from None
    parts = tuple(path.split("."))
    if len(parts) == 1:
        return lambda event: event.get(path, MISSING)
    rests = tuple(".".join(parts[i:]) for i in range(len(parts)))
    steps = tuple(zip(parts, rests, strict=True))
    if len(parts) == 3:  # the common depths written out: every event meets a few
        return _get3(parts, rests)
    if len(parts) == 4:
        return _get4(parts, rests)

    def get(event: Mapping[str, Any]) -> Any:
        node: Any = event
        for part, rest in steps:
            if type(node) is not dict and not isinstance(node, Mapping):  # dict: no ABC check
                return MISSING
            found = node.get(part, MISSING)
            if found is MISSING:  # a key that holds dots itself (or none at all)
                return node.get(rest, MISSING)
            node = found
        return node

    return get


def _get3(parts: tuple[str, ...], rests: tuple[str, ...]) -> Getter:
    """``field_getter``'s lookup of a path of three keys, the loop written out (the same
    steps: a key that holds dots itself is looked up once a part is absent)."""
    p0, p1, p2 = parts
    r0, r1 = rests[0], rests[1]

    def get(event: Mapping[str, Any]) -> Any:
        if type(event) is not dict and not isinstance(event, Mapping):
            return MISSING
        a = event.get(p0, MISSING)
        if a is MISSING:
            return event.get(r0, MISSING)
        if type(a) is not dict and not isinstance(a, Mapping):
            return MISSING
        b = a.get(p1, MISSING)
        if b is MISSING:
            return a.get(r1, MISSING)
        if type(b) is not dict and not isinstance(b, Mapping):
            return MISSING
        return b.get(p2, MISSING)

    return get


def _get4(parts: tuple[str, ...], rests: tuple[str, ...]) -> Getter:
    """:func:`_get3` for a path of four keys."""
    p0, p1, p2, p3 = parts
    r0, r1, r2 = rests[0], rests[1], rests[2]

    def get(event: Mapping[str, Any]) -> Any:
        if type(event) is not dict and not isinstance(event, Mapping):
            return MISSING
        a = event.get(p0, MISSING)
        if a is MISSING:
            return event.get(r0, MISSING)
        if type(a) is not dict and not isinstance(a, Mapping):
            return MISSING
        b = a.get(p1, MISSING)
        if b is MISSING:
            return a.get(r1, MISSING)
        if type(b) is not dict and not isinstance(b, Mapping):
            return MISSING
        c = b.get(p2, MISSING)
        if c is MISSING:
            return b.get(r2, MISSING)
        if type(c) is not dict and not isinstance(c, Mapping):
            return MISSING
        return c.get(p3, MISSING)

    return get


# --- values ---------------------------------------------------------------------------


def _string(value: SigmaString) -> _Match:
    cased = isinstance(value, SigmaCasedString)
    parts = value.s
    if any(isinstance(p, Placeholder) for p in parts):
        raise RuleProblem("modifier 'expand'", "placeholders are not evaluated")
    fold: Callable[[str], str] = (lambda s: s) if cased else str.lower
    texts = [fold(p) if isinstance(p, str) else p for p in parts]
    if all(isinstance(p, str) for p in texts):
        whole = "".join(str(p) for p in texts)
        return lambda v: (t := text_of(v)) is not None and fold(t) == whole
    inner = texts[1:-1]
    if len(texts) == 3 and texts[0] is _MULTI and texts[2] is _MULTI and isinstance(texts[1], str):
        needle = texts[1]
        return lambda v: (t := text_of(v)) is not None and needle in fold(t)
    if len(texts) == 2 and isinstance(texts[0], str) and texts[1] is _MULTI:
        prefix = texts[0]
        return lambda v: (t := text_of(v)) is not None and fold(t).startswith(prefix)
    if len(texts) == 2 and texts[0] is _MULTI and isinstance(texts[1], str):
        suffix = texts[1]
        return lambda v: (t := text_of(v)) is not None and fold(t).endswith(suffix)
    if texts == [_MULTI] or (not inner and all(p is _MULTI for p in texts)):
        return lambda v: text_of(v) is not None
    pattern = "".join(
        re.escape(p) if isinstance(p, str) else (".*" if p is _MULTI else ".") for p in texts
    )
    match = re.compile(pattern, re.DOTALL).fullmatch
    return lambda v: (t := text_of(v)) is not None and match(fold(t)) is not None


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _number(v: object) -> int | float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _value(value: SigmaType, local: LocalTime) -> _Match:
    """How one Sigma value matches a present, non-null event value."""
    if isinstance(value, SigmaString):
        return _string(value)
    if isinstance(value, SigmaTimestampPart):
        part, want = local.part(value.timestamp_part), value.number
        return lambda v: part(v) == want
    if isinstance(value, SigmaNumber):
        text = str(value.number)
        return lambda v: text_of(v) == text
    if isinstance(value, SigmaBool):
        want = value.boolean
        return lambda v: isinstance(v, bool) and v is want
    if isinstance(value, SigmaRegularExpression):
        flags = 0
        for flag in value.flags:
            flags |= SigmaRegularExpression.sigma_to_python_flags[flag]
        search = re.compile(str(value.regexp), flags).search
        return lambda v: (t := text_of(v)) is not None and search(t) is not None
    if isinstance(value, SigmaCIDRExpression):
        network = value.network
        return lambda v: isinstance(v, str) and (a := _address(v)) is not None and a in network
    if isinstance(value, SigmaCompareExpression):
        compare, bound = _COMPARE[value.op], value.number.number
        return lambda v: (n := _number(v)) is not None and compare(n, bound)
    if isinstance(value, SigmaExpansion):
        alternatives = tuple(_value(v, local) for v in value.values)
        return lambda v: any(m(v) for m in alternatives)
    raise RuleProblem(f"value type {type(value).__name__}", "not evaluated by trustmesh")


def _on_field(get: Getter, match: _Match) -> Predicate:
    def predicate(event: Mapping[str, Any]) -> bool:
        v = get(event)
        if v is MISSING or v is None:
            return False
        if isinstance(v, list):
            return any(x is not None and match(x) for x in v)
        return match(v)

    return predicate


def _leaves(node: object, depth: int = 0) -> Iterator[object]:
    """Every scalar value in an event (for keywords), to a bounded depth."""
    if isinstance(node, Mapping):
        if depth < _MAX_KEYWORD_DEPTH:
            for child in node.values():
                yield from _leaves(child, depth + 1)
    elif isinstance(node, list):
        if depth < _MAX_KEYWORD_DEPTH:
            for child in node:
                yield from _leaves(child, depth + 1)
    elif node is not None:
        yield node


def _fieldref(get: Getter, ref: SigmaFieldReference, local: LocalTime) -> Predicate:
    other = field_getter(ref.field, local)
    if ref.starts_with and ref.ends_with:
        test: Callable[[str, str], bool] = lambda a, b: b in a  # noqa: E731
    elif ref.starts_with:  # the field starts with the other field's value
        test = str.startswith
    elif ref.ends_with:
        test = str.endswith
    else:
        test = operator.eq

    def predicate(event: Mapping[str, Any]) -> bool:
        a, b = text_of(get(event)), text_of(other(event))
        return a is not None and b is not None and test(a.lower(), b.lower())

    return predicate


def _leaf(name: str | None, value: SigmaType, local: LocalTime) -> Predicate:
    if name is None:
        if isinstance(value, SigmaNull | SigmaExists | SigmaFieldReference):
            raise RuleProblem("keyword", f"{type(value).__name__} needs a field")
        match = _value(value, local)
        return lambda event: any(match(v) for v in _leaves(event))
    get = field_getter(name, local)
    if isinstance(value, SigmaNull):
        return lambda event: (v := get(event)) is MISSING or v is None
    if isinstance(value, SigmaExists):
        want = bool(value)
        return lambda event: ((v := get(event)) is not MISSING and v is not None) is want
    if isinstance(value, SigmaFieldReference):
        return _fieldref(get, value, local)
    return _on_field(get, _value(value, local))


# --- conditions -----------------------------------------------------------------------


def _plain_key(value: SigmaType) -> str | None:
    """The text an exact, wildcard-free value matches (case-folded), else None."""
    if isinstance(value, SigmaString) and not isinstance(value, SigmaCasedString):
        if all(isinstance(p, str) for p in value.s):
            return "".join(str(p) for p in value.s).lower()
    elif (
        isinstance(value, SigmaNumber)
        and not isinstance(value, SigmaTimestampPart)
        and isinstance(value.number, int)
    ):
        return str(value.number)
    return None


def _linked(predicates: Sequence[Predicate], *, conjunction: bool) -> Predicate:
    """AND (``conjunction``) or OR of ``predicates``, short-circuiting."""
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        a, b = predicates
        if conjunction:
            return lambda event: a(event) and b(event)
        return lambda event: a(event) or b(event)
    linked = tuple(predicates)

    def predicate(event: Mapping[str, Any]) -> bool:
        for p in linked:  # a loop: no generator per event
            if (not p(event)) is conjunction:  # false in an AND, true in an OR: decided
                return not conjunction
        return conjunction

    return predicate


def all_of(predicates: Sequence[Predicate]) -> Predicate:
    return _linked(predicates, conjunction=True)


def any_of(predicates: Sequence[Predicate]) -> Predicate:
    return _linked(predicates, conjunction=False)


def _one_of(wanted: frozenset[str]) -> _Match:
    return lambda v: (t := text_of(v)) is not None and t.lower() in wanted


def _or(args: Sequence[Any], local: LocalTime) -> Predicate:
    """OR, with the exact values of one field looked up in a set."""
    keys: dict[str, set[str]] = {}
    rest = []
    for arg in args:
        key = None
        if isinstance(arg, ConditionFieldEqualsValueExpression):
            key = _plain_key(arg.value)
        if key is None:
            rest.append(compile_condition(arg, local))
        else:
            keys.setdefault(arg.field, set()).add(key)
    predicates = rest
    for name, values in keys.items():
        predicates.append(_on_field(field_getter(name, local), _one_of(frozenset(values))))
    return any_of(predicates)


def compile_condition(node: object, local: LocalTime) -> Predicate:
    """The predicate of a pySigma condition tree (``SigmaCondition.parse()``)."""
    if isinstance(node, ConditionAND):
        return all_of([compile_condition(arg, local) for arg in node.args])
    if isinstance(node, ConditionOR):
        return _or(node.args, local)
    if isinstance(node, ConditionNOT):
        inner = compile_condition(node.args[0], local)
        return lambda event: not inner(event)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return _leaf(node.field, node.value, local)
    if isinstance(node, ConditionValueExpression):
        return _leaf(None, node.value, local)
    raise RuleProblem(f"condition element {type(node).__name__}", "not evaluated by trustmesh")


def constraints(node: object) -> dict[str, frozenset[str]]:
    """For each field the condition constrains to exact values on every path to a match:
    those values (case-folded text). A superset: the predicate still decides."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        key = _plain_key(node.value)
        return {} if key is None else {node.field: frozenset({key})}
    if isinstance(node, ConditionAND):
        merged: dict[str, frozenset[str]] = {}
        for arg in node.args:
            for name, values in constraints(arg).items():
                merged[name] = merged[name] & values if name in merged else values
        return merged
    if isinstance(node, ConditionOR) and node.args:
        parts = [constraints(arg) for arg in node.args]
        common = set(parts[0]).intersection(*parts[1:])
        return {name: frozenset().union(*(p[name] for p in parts)) for name in common}
    return {}
