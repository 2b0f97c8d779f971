"""The gateway's JSON parser: what it accepts reads exactly as the standard parser reads
it; what parsers could read differently (duplicate keys, NaN, numbers past any limit,
lone surrogates, a byte-order mark) is refused with the rule and where; nothing it is
given makes it raise anything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.gateway.strictjson import JsonLimits, JsonRefused, parse, pointer

LIMITS = JsonLimits()

documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(documents)
def test_what_it_accepts_reads_as_the_standard_parser_reads_it(document: Any) -> None:
    body = json.dumps(document).encode()
    parsed = parse(body, LIMITS)
    assert parsed.document == json.loads(body)


@settings(max_examples=300)
@given(documents)
def test_every_string_and_key_is_listed_with_its_pointer(document: Any) -> None:
    parsed = parse(json.dumps(document).encode(), LIMITS)
    for at, value in parsed.strings:
        node: Any = parsed.document
        parts = [p.replace("~1", "/").replace("~0", "~") for p in at.split("/")[1:]]
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1] if parts else None
        if isinstance(node, dict) and last in node and value == last:
            continue  # the key itself
        leaf = (
            node[int(last)] if isinstance(node, list) else node[last] if last is not None else node
        )
        assert leaf == value


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_no_bytes_make_it_raise_anything_but_a_refusal(body: bytes) -> None:
    refused: JsonRefused | None = None
    try:
        parse(body, LIMITS)
    except JsonRefused as exc:
        refused = exc
    if refused is not None:
        assert refused.rule
        assert refused.location[:1] in ("", "/")


@pytest.mark.parametrize(
    ("body", "rule", "location"),
    [
        (b'{"a": 1, "a": 2}', "duplicate-key", ""),
        (b'{"x": [{"a": 1}, {"b": 1, "b": 2}]}', "duplicate-key", "/x/1"),
        (b'{"a/b": {"c": 1, "c": 1}}', "duplicate-key", "/a~1b"),
        (b'{"n": NaN}', "not-json-number", ""),
        (b'{"n": -Infinity}', "not-json-number", ""),
        (b'{"n": 1' + b"0" * 64 + b"}", "number-too-long", ""),
        (b'{"n": 1.' + b"5" * 64 + b"}", "number-too-long", ""),
        (b'"\\ud800"', "lone-surrogate", ""),
        (b'{"k": "\\udfff x"}', "lone-surrogate", ""),
        (b"\xef\xbb\xbf{}", "byte-order-mark", ""),
        (b'{"a": "\xff"}', "not-utf-8", ""),
        (b"{", "not-json", ""),
        (b"", "not-json", ""),
        (b"[1,]", "not-json", ""),
        (b"[" * 33 + b"]" * 33, "too-deep", "/0" * 32),
        (b"[" * 5000 + b"]" * 5000, "too-deep", ""),
    ],
)
def test_what_parsers_disagree_on_is_refused_with_the_rule_and_where(
    body: bytes, rule: str, location: str
) -> None:
    with pytest.raises(JsonRefused) as refused:
        parse(body, LIMITS)
    assert (refused.value.rule, refused.value.location) == (rule, location)


def test_size_limits_name_the_place() -> None:
    small = JsonLimits(max_keys=2, max_items=2, max_string=4, max_depth=2)
    cases = [
        (b'{"a": {"x": 1, "y": 2, "z": 3}}', "too-many-keys", "/a"),
        (b'{"a": [1, 2, 3]}', "too-many-items", "/a"),
        (b'{"a": ["12345"]}', "string-too-long", "/a"),
        (b'{"abcde": 1}', "string-too-long", ""),
        (b'{"a": {"b": {}}}', "too-deep", "/a/b"),
    ]
    for body, rule, location in cases:
        with pytest.raises(JsonRefused) as refused:
            parse(body, small)
        assert (refused.value.rule, refused.value.location) == (rule, location), body
    assert parse(b'{"a": {"b": 1}}', small).document == {"a": {"b": 1}}


def test_pointers_escape_as_rfc_6901_says() -> None:
    assert pointer(("a/b", "m~n", 0, "")) == "/a~1b/m~0n/0/"
    assert pointer(()) == ""
