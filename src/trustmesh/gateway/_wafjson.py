"""A JSON body's strings, for the injection filter (:mod:`trustmesh.gateway.waf`) when the
gateway passes none: every key and every string value, a key given twice included (a
service may read either of its values, and the one a last-wins parser drops must not
pass unread).

Two readers, which find the same strings (``tests/gateway/test_waf_json.py`` holds them
to the same multiset on generated documents):

- :func:`located`, the reference: :func:`json.loads` with every member of an object
  kept, each string with the reference tokens (RFC 6901) of where it is, in the order
  the filter has always inspected them; ``None`` when json.loads refuses the body (not
  JSON, or nested past the recursion limit);
- :func:`fast_strings`, the fast one, where the filter starts: the strings alone, in the
  order of the text, without building the document. orjson checks the body (RFC 8259,
  strictly: UTF-8, no ``NaN``, no lone surrogate escape, no number a double cannot
  hold); every ``"`` of a valid JSON text outside a string opens one, and no backslash
  or raw control character appears outside one, so the strings are what lies between
  the quotes once the escaped ones are set aside. It answers ``None`` (the caller then
  asks :func:`located`) when orjson refuses the body, and when it holds more than
  ``_MAX_OPENINGS`` brackets (``[``, ``{``: a bound on its depth): json.loads
  recurses once per level and may refuse what orjson takes (1,024 levels); well under
  that, json.loads takes all that orjson takes, so the fast reader never stands in for
  a body json.loads would refuse (which the filter inspects whole).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import orjson

__all__ = ["Members", "fast_strings", "located"]

#: at most this many brackets for the fast reader: json.loads, which recurses once per
#: level (its callers' frames counted against Python's limit of 1,000), takes such a
#: body whenever orjson does
_MAX_OPENINGS = 256
#: what stands for an escaped backslash and an escaped quote while the text is cut at
#: its quotes: control characters, which valid JSON never holds raw
_BACKSLASH, _QUOTE = "\x00", "\x01"


class Members(list[tuple[str, object]]):
    """A JSON object as :func:`located` parses it: every member, in order, a repeated
    key included."""


def located(body: bytes) -> list[tuple[tuple[str, ...], str]] | None:
    """Every key and string value of the body, each with the reference tokens of where
    it is (a key: the object holding it), or ``None`` when json.loads refuses it."""
    try:
        document = json.loads(body, object_pairs_hook=Members)
    except (ValueError, RecursionError):
        return None
    return list(_walk(document))


def _walk(document: object) -> Iterator[tuple[tuple[str, ...], str]]:
    """The strings of a parsed document, without recursion: an object's keys, then its
    members' values, the last first."""
    stack: list[tuple[tuple[str, ...], object]] = [((), document)]
    while stack:
        tokens, node = stack.pop()
        if isinstance(node, str):
            yield tokens, node
        elif isinstance(node, Members):
            for key, child in node:
                yield tokens, key
                stack.append(((*tokens, key), child))
        elif isinstance(node, list):
            stack.extend(((*tokens, str(i)), child) for i, child in enumerate(node))


def fast_strings(body: bytes) -> list[str] | None:
    """The same strings as :func:`located` (as a multiset), in the order of the text, or
    ``None`` when this reader cannot answer for json.loads (module docstring)."""
    if body.count(b"[") + body.count(b"{") > _MAX_OPENINGS:
        return None
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    text = body.decode("utf-8")  # orjson has checked that it is UTF-8
    if "\\" not in text:  # no escape: each string is what lies between two quotes
        return text.split('"')[1::2]
    # an escape is a backslash and what follows it, from the left of a run of them: an
    # escaped backslash first, then an escaped quote, are set aside while the text is
    # cut, and the strings, escapes restored, decoded in one call as an array
    cut = text.replace("\\\\", _BACKSLASH).replace('\\"', _QUOTE).split('"')[1::2]
    escaped = '","'.join(cut).replace(_BACKSLASH, "\\\\").replace(_QUOTE, '\\"')
    decoded: list[str] = orjson.loads(f'["{escaped}"]')
    return decoded
