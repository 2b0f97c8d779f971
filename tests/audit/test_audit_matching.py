"""Every supported modifier and condition form, matching and not matching, on one event;
property tests of the wildcard, CIDR and value-list matchers against references."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from auditkit import T0_MS
from hypothesis import given
from hypothesis import strategies as st
from sigma.conditions import ConditionFieldEqualsValueExpression, ConditionOR
from sigma.types import SigmaCIDRExpression, SigmaString

from trustmesh.audit.behaviour import MISSING, LocalTime, WorkingHours
from trustmesh.audit.matching import Predicate, compile_condition, field_getter
from trustmesh.audit.sigma_rules import load_ruleset

LOCAL = LocalTime(WorkingHours())

EVENT: dict[str, Any] = {
    "class_uid": 6003,
    "time": T0_MS,  # Monday 2026-01-05 12:00:00 UTC, ISO week 2
    "message": "Call denied by policy",
    "metadata": {"uid": "e1", "product": {"feature": {"name": "orders"}}},
    "src_endpoint": {"ip": "10.1.2.3"},
    "dst_endpoint": {"ip": "2001:db8::5"},
    "unmapped": {
        "trustmesh": {
            "reason": "policy-deny",
            "decision": "deny",
            "peer_spiffe_id": "spiffe://trustmesh.local/payments",
            "attributes": {
                "code": "policy-deny",
                "path": "/Orders/42",
                "method": "POST",
                "copy": "post",
                "id": "42",
                "star": "a*b",
                "cmd": "run -force /quiet",
                "blob": base64.b64encode(b"secret-path hello").decode(),
                "blob2": base64.b64encode(b"xx hello world yy").decode(),
                "multi": "line1\nline2",
                "dotted.key": "x",
                "tags": ["a", "b"],
                "enabled": True,
                "nothing": None,
                "count": 7,
                "ratio": 0.5,
            },
        }
    },
}
A = "unmapped.trustmesh.attributes."
R = A + "code"  # the reason field refuses values that are not codes (see the load tests)


def predicate(tmp_path: Path, detection: dict[str, Any]) -> Predicate:
    rule = {
        "title": "t",
        "id": "6c3c9a0e-5a48-4c35-9d7e-2f2f1c0a0b01",
        "logsource": {"product": "trustmesh"},
        "detection": detection,
    }
    path = tmp_path / "rule.yml"
    path.write_text(yaml.safe_dump(rule))
    return load_ruleset([path], LOCAL).detections[0].predicate


def sel(**items: Any) -> dict[str, Any]:
    return {
        "sel": {k.replace("__", "|").replace("_DOT_", "."): v for k, v in items.items()},
        "condition": "sel",
    }


def one(field: str, value: Any) -> dict[str, Any]:
    return {"sel": {field: value}, "condition": "sel"}


CASES: list[tuple[str, dict[str, Any], bool]] = [
    # plain values
    ("reason", one("unmapped.trustmesh.reason", "policy-deny"), True),
    ("reason-miss", one("unmapped.trustmesh.reason", "policy-allow"), False),
    ("string", one(R, "policy-deny"), True),
    ("string-any-case", one(R, "POLICY-Deny"), True),
    ("string-whole-value", one(R, "policy"), False),
    ("wildcard-suffix", one(R, "policy-*"), True),
    ("wildcard-prefix", one(R, "*-deny"), True),
    ("wildcard-single", one(R, "p?licy-deny"), True),
    ("wildcard-middle", one(R, "pol*y-d?ny"), True),
    ("wildcard-miss", one(R, "pol*x"), False),
    ("escaped-star", one(A + "star", "a\\*b"), True),
    ("escaped-star-is-literal", one(A + "star", "a\\*x"), False),
    ("list-is-or", one(R, ["x", "policy-deny"]), True),
    ("list-is-or-miss", one(R, ["x", "y"]), False),
    (
        "map-is-and",
        {"sel": {R: "policy-deny", "unmapped.trustmesh.decision": "deny"}, "condition": "sel"},
        True,
    ),
    (
        "map-is-and-miss",
        {"sel": {R: "policy-deny", "unmapped.trustmesh.decision": "allow"}, "condition": "sel"},
        False,
    ),
    ("list-of-maps-is-or", {"sel": [{R: "x"}, {"class_uid": 6003}], "condition": "sel"}, True),
    ("number", one("class_uid", 6003), True),
    ("number-miss", one("class_uid", 6004), False),
    ("number-as-text", one("class_uid", "6003"), True),
    ("float", one(A + "ratio", 0.5), True),
    ("bool", one(A + "enabled", True), True),
    ("bool-miss", one(A + "enabled", False), False),
    ("null-value", one(A + "nothing", None), True),
    ("null-absent", one(A + "absent", None), True),
    ("null-present", one(R, None), False),
    ("dotted-key", one(A + "dotted.key", "x"), True),
    ("list-field", one(A + "tags", "b"), True),
    ("list-field-miss", one(A + "tags", "c"), False),
    ("keyword", {"words": ["*denied by*"], "condition": "words"}, True),
    ("keyword-whole-value", {"words": ["POLICY-DENY"], "condition": "words"}, True),
    ("keyword-miss", {"words": ["nothing here"], "condition": "words"}, False),
    # modifiers
    ("contains", one(A + "path|contains", "orders/"), True),
    ("contains-miss", one(A + "path|contains", "xyz"), False),
    ("startswith", one(A + "path|startswith", "/orders"), True),
    ("startswith-miss", one(A + "path|startswith", "orders"), False),
    ("endswith", one(A + "path|endswith", "/42"), True),
    ("endswith-miss", one(A + "path|endswith", "/4"), False),
    ("all", one(A + "path|contains|all", ["orders", "42"]), True),
    ("all-miss", one(A + "path|contains|all", ["orders", "43"]), False),
    ("re", one(A + "path|re", r"^/Orders/\d+$"), True),
    ("re-searches", one(A + "path|re", r"s/4"), True),
    ("re-is-cased", one(A + "path|re", r"^/orders/\d+$"), False),
    ("re-i", one(A + "path|re|i", r"^/orders/\d+$"), True),
    ("re-ignorecase", one(A + "path|re|ignorecase", r"^/orders/\d+$"), True),
    ("re-m", one(A + "multi|re|m", r"^line2$"), True),
    ("re-without-m", one(A + "multi|re", r"^line2$"), False),
    ("re-s", one(A + "multi|re|s", r"line1.line2"), True),
    ("re-without-s", one(A + "multi|re", r"line1.line2"), False),
    ("re-contains", one(A + "path|re|contains", r"rders"), True),
    ("cidr-v4", one("src_endpoint.ip|cidr", "10.0.0.0/8"), True),
    ("cidr-v4-miss", one("src_endpoint.ip|cidr", "192.168.0.0/16"), False),
    ("cidr-v6", one("dst_endpoint.ip|cidr", "2001:db8::/32"), True),
    ("cidr-v6-miss", one("dst_endpoint.ip|cidr", "2001:db9::/32"), False),
    ("cidr-not-an-address", one(A + "path|cidr", "10.0.0.0/8"), False),
    ("base64", one(A + "blob|base64", "secret-path hello"), True),
    ("base64-miss", one(A + "blob|base64", "secret-path bye"), False),
    ("base64offset", one(A + "blob2|base64offset|contains", "hello world"), True),
    ("base64offset-miss", one(A + "blob2|base64offset|contains", "goodbye"), False),
    ("exists", one(A + "method|exists", True), True),
    ("exists-absent", one(A + "absent|exists", True), False),
    ("exists-false", one(A + "absent|exists", False), True),
    ("exists-null", one(A + "nothing|exists", True), False),
    ("lt", one(A + "count|lt", 8), True),
    ("lt-miss", one(A + "count|lt", 7), False),
    ("lte", one(A + "count|lte", 7), True),
    ("lte-miss", one(A + "count|lte", 6), False),
    ("gt", one(A + "count|gt", 6), True),
    ("gt-miss", one(A + "count|gt", 7), False),
    ("gte", one(A + "count|gte", 7), True),
    ("gte-miss", one(A + "count|gte", 8), False),
    ("gt-float", one(A + "ratio|gt", 0.25), True),
    ("compare-never-a-string", one(A + "id|gt", 1), False),
    ("compare-never-a-bool", one(A + "enabled|gte", 1), False),
    ("cased", one(R + "|cased", "policy-deny"), True),
    ("cased-miss", one(R + "|cased", "POLICY-DENY"), False),
    ("cased-wildcard", one(A + "method|cased", "P*T"), True),
    ("cased-wildcard-miss", one(A + "method|cased", "p*t"), False),
    ("neq", one(R + "|neq", "policy-allow"), True),
    ("neq-miss", one(R + "|neq", "policy-deny"), False),
    ("windash", one(A + "cmd|windash|contains", "-quiet"), True),
    ("windash-same", one(A + "cmd|windash|contains", "/force"), True),
    ("windash-miss", one(A + "cmd|windash|contains", "-nope"), False),
    ("fieldref", one(A + "method|fieldref", A + "copy"), True),
    ("fieldref-miss", one(A + "method|fieldref", A + "path"), False),
    ("fieldref-absent", one(A + "method|fieldref", A + "absent"), False),
    ("fieldref-contains", one(A + "path|fieldref|contains", A + "id"), True),
    ("fieldref-endswith", one(A + "path|fieldref|endswith", A + "id"), True),
    ("fieldref-startswith-miss", one(A + "path|fieldref|startswith", A + "id"), False),
    ("minute", one("time|minute", 0), True),
    ("hour", one("time|hour", 12), True),
    ("hour-miss", one("time|hour", 13), False),
    ("day", one("time|day", 5), True),
    ("week", one("time|week", 2), True),
    ("month", one("time|month", 1), True),
    ("year", one("time|year", 2026), True),
    ("year-miss", one("time|year", 2025), False),
    ("derived-hour", one("derived.hour", 12), True),
    ("derived-weekday", one("derived.weekday", 1), True),
    ("derived-working-hours", one("derived.working_hours", True), True),
    ("derived-working-hours-miss", one("derived.working_hours", False), False),
    # conditions
    ("and", {"a": {R: "policy-deny"}, "b": {"class_uid": 6003}, "condition": "a and b"}, True),
    ("and-miss", {"a": {R: "policy-deny"}, "b": {"class_uid": 1}, "condition": "a and b"}, False),
    ("or", {"a": {R: "x"}, "b": {"class_uid": 6003}, "condition": "a or b"}, True),
    ("or-miss", {"a": {R: "x"}, "b": {"class_uid": 1}, "condition": "a or b"}, False),
    ("not", {"a": {R: "x"}, "condition": "not a"}, True),
    ("not-miss", {"a": {R: "policy-deny"}, "condition": "not a"}, False),
    (
        "parentheses",
        {
            "a": {R: "x"},
            "b": {"class_uid": 6003},
            "c": {"class_uid": 1},
            "condition": "(a or b) and not c",
        },
        True,
    ),
    (
        "parentheses-miss",
        {
            "a": {R: "x"},
            "b": {"class_uid": 6003},
            "c": {"class_uid": 1},
            "condition": "a or (b and c)",
        },
        False,
    ),
    ("1-of", {"sel_a": {R: "x"}, "sel_b": {"class_uid": 6003}, "condition": "1 of sel_*"}, True),
    ("1-of-miss", {"sel_a": {R: "x"}, "sel_b": {"class_uid": 1}, "condition": "1 of sel_*"}, False),
    (
        "any-of",
        {"sel_a": {R: "x"}, "sel_b": {"class_uid": 6003}, "condition": "any of sel_*"},
        True,
    ),
    (
        "all-of",
        {"sel_a": {R: "policy-deny"}, "sel_b": {"class_uid": 6003}, "condition": "all of sel_*"},
        True,
    ),
    (
        "all-of-miss",
        {"sel_a": {R: "policy-deny"}, "sel_b": {"class_uid": 1}, "condition": "all of sel_*"},
        False,
    ),
    ("1-of-them", {"a": {R: "x"}, "b": {"class_uid": 6003}, "condition": "1 of them"}, True),
    ("1-of-them-miss", {"a": {R: "x"}, "b": {"class_uid": 1}, "condition": "1 of them"}, False),
    (
        "all-of-them",
        {"a": {R: "policy-deny"}, "b": {"class_uid": 6003}, "condition": "all of them"},
        True,
    ),
    (
        "all-of-them-miss",
        {"a": {R: "policy-deny"}, "b": {"class_uid": 1}, "condition": "all of them"},
        False,
    ),
    (
        "1-of-and-not",
        {
            "sel_a": {R: "policy-deny"},
            "f": {"class_uid": 6003},
            "condition": "1 of sel_* and not f",
        },
        False,
    ),
    (
        "conditions-list-is-or",
        {"a": {R: "x"}, "b": {"class_uid": 6003}, "condition": ["a", "b"]},
        True,
    ),
    (
        "conditions-list-miss",
        {"a": {R: "x"}, "b": {"class_uid": 1}, "condition": ["a", "b"]},
        False,
    ),
]


@pytest.mark.parametrize(
    ("detection", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_table(tmp_path: Path, detection: dict[str, Any], expected: bool) -> None:
    assert predicate(tmp_path, detection)(EVENT) is expected


def test_the_table_has_a_match_and_a_miss_for_every_modifier() -> None:
    modifiers = {"contains", "startswith", "endswith", "all", "re", "i", "m", "s", "cidr"}
    modifiers |= {"base64", "base64offset", "exists", "lt", "lte", "gt", "gte", "cased"}
    modifiers |= {"neq", "windash", "fieldref", "hour", "year"}
    for modifier in modifiers:
        used = [
            expected
            for _, detection, expected in CASES
            if any(f"|{modifier}" in key for key in detection.get("sel", {}))
        ]
        assert True in used, modifier
        # i, m and s show their effect by the miss without them
        assert False in used or modifier in {"i", "m", "s"}, modifier


def test_an_ipv4_mapped_ipv6_address_is_its_ipv4_address(tmp_path: Path) -> None:
    match = predicate(tmp_path, one("src_endpoint.ip|cidr", "10.0.0.0/8"))
    assert match({"src_endpoint": {"ip": "::ffff:10.9.9.9"}})
    assert not match({"src_endpoint": {"ip": "::ffff:11.9.9.9"}})


def test_a_field_in_a_non_mapping_is_absent(tmp_path: Path) -> None:
    match = predicate(tmp_path, one("src_endpoint.ip", None))
    assert match({"src_endpoint": "10.0.0.1"})
    assert match({})
    assert not match({"src_endpoint": {"ip": "10.0.0.1"}})


# --- properties ---------------------------------------------------------------------


def _tokens(pattern: str) -> list[str]:
    """Sigma's escaping, independently: ``\\`` escapes ``* ? \\``; a lone one is literal.
    Tokens: "*", "?" or a one-character literal prefixed with "="."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*?\\":
            out.append("=" + pattern[i + 1])
            i += 2
            continue
        out.append(c if c in "*?" else "=" + c)
        i += 1
    return out


def _reference(pattern: str, value: str) -> bool:
    """Wildcard matching by dynamic programming, case-folded."""
    tokens, text = _tokens(pattern.lower()), value.lower()
    row = [True] + [False] * len(text)
    for token in tokens:
        new = [row[0] and token == "*"] + [False] * len(text)
        for j in range(1, len(text) + 1):
            if token == "*":
                new[j] = new[j - 1] or row[j]
            elif token == "?":
                new[j] = row[j - 1]
            else:
                new[j] = row[j - 1] and text[j - 1] == token[1]
        row = new
    return row[-1]


@given(st.text(alphabet="aAb*?\\", max_size=8), st.text(alphabet="aAb*?\\", max_size=8))
def test_wildcards_match_as_the_reference(pattern: str, value: str) -> None:
    match = compile_condition(ConditionFieldEqualsValueExpression("f", SigmaString(pattern)), LOCAL)
    assert match({"f": value}) is _reference(pattern, value)


def test_the_reference_knows_the_escapes() -> None:
    assert _reference("a\\*", "a*")
    assert not _reference("a\\*", "ab")
    assert _reference("a\\", "a\\")
    assert _reference("a\\\\*", "a\\bc")
    assert _reference("A*", "abc")
    assert not _reference("?", "")


_V4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))


@given(_V4, _V4, st.integers(0, 32))
def test_cidr_matches_as_ipaddress(
    address: ipaddress.IPv4Address, base: ipaddress.IPv4Address, prefix: int
) -> None:
    network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    match = compile_condition(
        ConditionFieldEqualsValueExpression("ip", SigmaCIDRExpression(str(network))), LOCAL
    )
    assert match({"ip": str(address)}) is (address in network)


@given(
    st.lists(st.text(alphabet="abAB-", min_size=1, max_size=4), min_size=1, max_size=6),
    st.text(alphabet="abAB-", max_size=4),
)
def test_a_value_list_is_any_of_its_values(values: list[str], value: str) -> None:
    items = [ConditionFieldEqualsValueExpression("f", SigmaString(v)) for v in values]
    either = compile_condition(ConditionOR(items), LOCAL)  # looked up in a set
    each = [compile_condition(item, LOCAL) for item in items]
    assert either({"f": value}) is any(p({"f": value}) for p in each)
    assert either({"f": value}) is (value.lower() in {v.lower() for v in values})


def _reference_get(event: object, path: str) -> object:
    """The field lookup as the module docstring reads it, one step at a time: each part
    in turn, and once a part is absent the rest of the path as one key (a key that holds
    dots itself)."""
    parts = path.split(".")
    node = event
    for index, part in enumerate(parts):
        if not isinstance(node, dict):
            return MISSING
        if part not in node:
            return node.get(".".join(parts[index:]), MISSING)
        node = node[part]
    return node


_KEYS = st.sampled_from(["a", "b", "c", "d", "a.b", "b.c", "c.d", "a.b.c", "b.c.d"])
_TREES = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
    lambda inner: st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@given(_TREES, st.sampled_from(["a.b", "a.b.c", "a.b.c.d", "b.c.d", "a.b.c.d.a"]))
def test_field_getter_is_the_stepwise_lookup(event: object, path: str) -> None:
    """The lookups written out for common depths find what the step-by-step reading
    finds, dotted keys and non-objects on the way included."""
    assert field_getter(path, LOCAL)(event) == _reference_get(event, path)  # type: ignore[arg-type]
