"""A JSON body's strings for the injection filter (:mod:`trustmesh.gateway._wafjson`): the
fast reader finds the same strings as the reference (json.loads, every member kept), a
key given twice and every spelling of a string included; it never reads a body that
json.loads refuses (the filter inspects that whole); and the filter answers what the
reference reading answers, the first finding and its place included."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.gateway import _wafjson, waf
from trustmesh.gateway._wafjson import Members, fast_strings, located
from trustmesh.gateway.waf import Category, FastFilter, Finding

FILTER = FastFilter()
_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n"}
_SHORT |= {"\r": "\\r", "\t": "\\t"}
_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])


def inspect(body: bytes) -> Finding | None:
    return FILTER.inspect(
        path="/", query=b"", headers=[], content_type="application/json", body=body
    )


def reference(body: bytes) -> Counter[str]:
    found = located(body)
    assert found is not None
    return Counter(text for _, text in found)


def spelled(draw: st.DrawFn, text: str) -> str:
    """A JSON string literal of ``text``, each character spelled one of its ways: as it
    is (a lone surrogate too: bytes json.loads reads with ``surrogatepass``), ``\\u``
    in either case (a pair of them past the BMP), or its short escape."""
    out = ['"']
    for char in text:
        ways = [f"\\u{unit:04x}" for unit in _units(char)]
        ways = ["".join(ways), "".join(ways).upper().replace("\\U", "\\u")]
        if char in _SHORT:
            ways.append(_SHORT[char])
        if char not in '"\\' and char >= " ":
            ways.append(char)
        out.append(draw(st.sampled_from(ways)))
    return "".join(out) + '"'


def _units(char: str) -> list[int]:
    code = ord(char)
    if code < 0x10000:
        return [code]
    code -= 0x10000
    return [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]


def dumped(draw: st.DrawFn, node: Any) -> str:
    """``node`` as JSON text, objects as their members (a key repeated), with
    whitespace here and there."""
    space = draw(_SPACE)
    if isinstance(node, Members):
        members = [f"{spelled(draw, key)}{draw(_SPACE)}:{dumped(draw, v)}" for key, v in node]
        return f"{space}{{{','.join(members)}{draw(_SPACE)}}}"
    if isinstance(node, list):
        return f"{space}[{','.join(dumped(draw, item) for item in node)}{draw(_SPACE)}]"
    if isinstance(node, str):
        return space + spelled(draw, node)
    return space + json.dumps(node)


def trees(text: st.SearchStrategy[str], numbers: st.SearchStrategy[object]) -> Any:
    keys = st.one_of(st.sampled_from(["a", "b", 'q"', "\\"]), text)
    return st.recursive(
        st.one_of(st.none(), st.booleans(), numbers, text),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(st.tuples(keys, children), max_size=4).map(Members),
        ),
        max_leaves=24,
    )


#: any text: lone surrogates and characters past the BMP included
ANY_TEXT = st.text(st.characters(codec=None), max_size=12)
ANY_NUMBER = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
#: what orjson takes too: no lone surrogate, integers a double holds
FAST_TEXT = st.text(max_size=12)
FAST_NUMBER = st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False)
)


@st.composite
def documents(draw: st.DrawFn, tree: st.SearchStrategy[Any]) -> bytes:
    return (dumped(draw, draw(tree)) + draw(_SPACE)).encode("utf-8", "surrogatepass")


@settings(max_examples=800, deadline=None)
@given(documents(trees(ANY_TEXT, ANY_NUMBER)))
def test_the_fast_reader_finds_the_references_strings(body: bytes) -> None:
    strings = fast_strings(body)
    assert strings is None or Counter(strings) == reference(body)


@settings(max_examples=500, deadline=None)
@given(documents(trees(FAST_TEXT, FAST_NUMBER)))
def test_the_fast_reader_reads_what_orjson_takes(body: bytes) -> None:
    strings = fast_strings(body)
    assert strings is not None
    assert Counter(strings) == reference(body)


@settings(max_examples=800, deadline=None)
@given(documents(trees(ANY_TEXT, ANY_NUMBER)), st.data())
def test_the_fast_reader_never_reads_what_json_loads_refuses(
    body: bytes, data: st.DataObject
) -> None:
    """Near-JSON (a byte of a document removed, replaced or added) and any bytes."""
    at = data.draw(st.integers(0, len(body)))
    byte = data.draw(st.binary(min_size=1, max_size=1))
    for mutated in (
        body[:at] + body[at + 1 :],
        body[:at] + byte + body[at + 1 :],
        body[:at] + byte + body[at:],
        data.draw(st.binary(max_size=40)),
    ):
        strings = fast_strings(mutated)
        if located(mutated) is None:
            assert strings is None
        elif strings is not None:
            assert Counter(strings) == reference(mutated)


@pytest.mark.parametrize(
    "body",
    [
        rb'{"q": "1 UNION SELECT", "q": "tea", "q": {"q": "tea"}}',
        rb'["\\", "\"", "\\\"", "\\\\", "x\\\\\"y\\\\", "\\\\\\\\\""]',
        rb'{"\"": "\\", "\\": "\"", "a\\\\": "\\\\b"}',
        rb'["\u0022", "\u005c", "\u005c\"", "\/\b\f\n\r\t", "\ud83d\ude00", "\u00e9"]',
        rb'"top"',
        rb" [1, -0, 2.5e-3, 1E+2, true, false, null, [], {}, 18446744073709551616] ",
        '{"café": ["crème", "🎉"]}'.encode(),
    ],
)
def test_each_spelling_and_a_repeated_key_are_read_fast(body: bytes) -> None:
    strings = fast_strings(body)
    assert strings is not None
    assert Counter(strings) == reference(body)


@pytest.mark.parametrize(
    "body",
    [
        b'[NaN, "x"]',  # json.loads takes these, orjson does not
        b'["\\ud800", "x"]',
        b'["\xed\xa0\x80", "x"]',  # a surrogate's bytes: json.loads reads surrogatepass
        b"[1e400]",
        b'\xef\xbb\xbf["x"]',
        b"[" * 300 + b'"x"' + b"]" * 300,  # orjson reads 1,024 levels, json.loads fewer
    ],
)
def test_what_orjson_refuses_or_may_be_too_deep_is_read_by_json_loads(body: bytes) -> None:
    assert fast_strings(body) is None
    assert located(body) is not None


def test_a_body_too_deep_for_json_loads_is_inspected_whole_as_before() -> None:
    """orjson reads it, json.loads does not: the filter inspects the text whole, in
    which an escaped ``<`` is no ``<`` (the strings decoded would be refused)."""
    script = rb'"\u003cscript\u003e\u003c/script\u003e"'
    deep = b"[" * 1010 + script + b"]" * 1010
    assert located(deep) is None
    assert fast_strings(deep) is None
    assert inspect(deep) is None
    shallow = b"[" * 3 + script + b"]" * 3
    assert inspect(shallow) == Finding(Category.XSS, "body/0/0/0", "xss-script-tag")


def test_json_loads_reads_as_deep_as_the_bound_from_a_deep_caller() -> None:
    """What the fast reader takes, json.loads reads too, even called from 500 frames
    deep (a gateway's stack is far shallower)."""
    levels = _wafjson._MAX_OPENINGS - 1
    body = b"[" * levels + b'{"k": "v"}' + b"]" * levels
    assert fast_strings(body) == ["k", "v"]
    assert fast_strings(b"[" + body + b"]") is None

    def nested(frames: int) -> Counter[str]:
        return reference(body) if frames == 0 else nested(frames - 1)

    assert nested(500) == Counter(["k", "v"])


def test_the_first_finding_and_its_place_are_the_references() -> None:
    """In the text the XSS comes first; the filter has always inspected an object's keys
    first, then its members' values, the last first: the SQLi is the finding."""
    body = b'{"a": {"b": "<script>alert(1)</script>"}, "c": "1 UNION SELECT password FROM users--"}'
    assert inspect(body) == Finding(Category.SQLI, "body/c", "sqli-union-select")
    repeated = b'{"q": "1 UNION SELECT password FROM users--", "q": "tea"}'
    assert inspect(repeated) == Finding(Category.SQLI, "body/q", "sqli-union-select")


ATTACKS = [
    "1' or '1'='1' --",
    "<script>alert(1)</script>",
    "../../../../etc/shadow",
    "8.8.8.8; cat /etc/hostname",
    "%3Cscript%3Ealert(1)%3C/script%3E",
]
MIXED = st.one_of(st.sampled_from(ATTACKS), st.sampled_from(["tea", "O'Brien", "a/b"]), FAST_TEXT)


@settings(max_examples=500, deadline=None)
@given(documents(trees(MIXED, FAST_NUMBER)))
def test_the_filter_answers_what_the_reference_reading_answers(body: bytes) -> None:
    assert fast_strings(body) is not None
    assert inspect(body) == waf._in_json_body(body)
