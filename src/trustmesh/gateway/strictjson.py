"""A request body's JSON, parsed once at the edge with limits, so that the gateway and
the service read the same document.

A parser differential is an attack: a body with a key twice is read as its first value
by one parser and its last by another, so a validator that checks one and a service
that acts on the other disagree on what was asked. :func:`parse` therefore refuses
what parsers disagree on, and bounds what costs the gateway:

- duplicate keys in an object (RFC 8259 §4: names SHOULD be unique; we require it);
- ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON, RFC 8259 §6);
- a number of more than ``max_number_digits`` characters (an integer of 4,300 digits
  already costs Python quadratic time; floats past double precision read differently);
- more than ``max_depth`` levels of nested objects and arrays;
- more than ``max_keys`` keys in one object, more than ``max_items`` items in one array;
- a string (or a key) longer than ``max_string`` characters;
- anything that is not UTF-8 JSON (a byte-order mark included), or holds a lone
  surrogate escape (``"\\ud800"``: not a Unicode string any service can hold).

A refusal is a :class:`JsonRefused` naming the rule and, where it has one, the JSON
Pointer (RFC 6901) of the place — never the offending text. A parsed body comes with
every string in it, keys included, and its pointer (:attr:`Parsed.strings`), which is
what the injection filter inspects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["JsonLimits", "JsonRefused", "Parsed", "parse", "pointer"]

_SURROGATE: Final = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_depth: int = 32
    max_keys: int = 1000
    max_items: int = 10_000
    max_string: int = 65_536
    max_number_digits: int = 64


class JsonRefused(ValueError):
    """The body is not JSON the gateway accepts: ``rule`` (a short code) and
    ``location`` (a JSON Pointer into the body, "" for the whole of it)."""

    def __init__(self, rule: str, location: str = "") -> None:
        super().__init__(f"{rule} at {location or '/'}")
        self.rule = rule
        self.location = location


@dataclass(frozen=True, slots=True)
class Parsed:
    document: Any
    #: every string of the document (each key too), with its pointer
    strings: tuple[tuple[str, str], ...]


class _Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    made = dict(pairs)
    if len(made) != len(pairs):
        raise _Duplicate
    return made


def _refuse_constant(_name: str) -> Any:
    raise JsonRefused("not-json-number")


class _NumberTooLong(Exception):
    pass


def _number(limit: int, convert: Any) -> Any:
    def parse(text: str) -> Any:
        if len(text) > limit:
            raise _NumberTooLong
        return convert(text)

    return parse


def pointer(parts: tuple[str | int, ...]) -> str:
    """RFC 6901: each part with ``~`` as ``~0`` and ``/`` as ``~1``."""
    return "".join(
        "/" + (str(p) if isinstance(p, int) else p.replace("~", "~0").replace("/", "~1"))
        for p in parts
    )


def parse(body: bytes, limits: JsonLimits) -> Parsed:
    """The document and its strings, or :class:`JsonRefused` (module docstring)."""
    if body[:3] == b"\xef\xbb\xbf":
        raise JsonRefused("byte-order-mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonRefused("not-utf-8") from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_refuse_constant,
            parse_int=_number(limits.max_number_digits, int),
            parse_float=_number(limits.max_number_digits, float),
        )
    except _Duplicate:
        raise JsonRefused("duplicate-key", _duplicate_at(text)) from None
    except _NumberTooLong:
        raise JsonRefused("number-too-long") from None
    except RecursionError:
        raise JsonRefused("too-deep") from None
    except ValueError as exc:
        if isinstance(exc, JsonRefused):
            raise
        raise JsonRefused("not-json") from None
    return Parsed(document, tuple(_walk(document, limits)))


def _walk(document: Any, limits: JsonLimits) -> Iterator[tuple[str, str]]:
    """Every string with its pointer, checking depth, sizes and surrogates (iterative:
    the depth is bounded by the limit, not by Python's stack)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    max_string, max_depth = limits.max_string, limits.max_depth
    while stack:
        node, path = stack.pop()
        kind = type(node)
        if kind is str:
            _check_string(node, path, max_string)
            yield pointer(path), node
        elif kind is dict:
            if len(path) >= max_depth:
                raise JsonRefused("too-deep", pointer(path))
            if len(node) > limits.max_keys:
                raise JsonRefused("too-many-keys", pointer(path))
            for key, value in node.items():
                at = (*path, key)
                _check_string(key, at, max_string)
                yield pointer(at), key
                stack.append((value, at))
        elif kind is list:
            if len(path) >= max_depth:
                raise JsonRefused("too-deep", pointer(path))
            if len(node) > limits.max_items:
                raise JsonRefused("too-many-items", pointer(path))
            stack.extend((value, (*path, i)) for i, value in enumerate(node))


def _check_string(value: str, path: tuple[str | int, ...], limit: int) -> None:
    if len(value) > limit:
        raise JsonRefused("string-too-long", pointer(path[:-1] if path else path))
    if not value.isascii() and _SURROGATE.search(value):
        raise JsonRefused("lone-surrogate", pointer(path[:-1] if path else path))


class _Twice(dict[str, Any]):
    """An object that held a key twice (only when looking for where, on a refusal)."""


def _duplicate_at(text: str) -> str:
    """The pointer of the first object (in document order) holding a key twice: parsed
    again, marking such objects (only on a refusal)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        made = dict(items)
        return _Twice(made) if len(made) != len(items) else made

    stack: list[tuple[Any, tuple[str | int, ...]]] = [
        (json.loads(text, object_pairs_hook=pairs), ())
    ]
    while stack:
        node, path = stack.pop(0)
        if isinstance(node, _Twice):
            return pointer(path)
        if isinstance(node, dict):
            stack[:0] = [(v, (*path, k)) for k, v in node.items()]
        elif isinstance(node, list):
            stack[:0] = [(v, (*path, i)) for i, v in enumerate(node)]
    return ""
