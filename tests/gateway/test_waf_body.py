"""The screen of many values at once (:mod:`trustmesh.gateway._wafbody`): it decides what
a request's values cost, never what is found in them.

- every rule of the tables, every command-injection and traversal check that matches a
  vector string (as in ``test_waf_screen``) is let through by it;
- what the filter finds in values screened together is what it finds in each alone
  (the vectors one by one and mixed, generated values, values that cannot be screened
  together: not ASCII, holding the separator);
- all the parts of a request screened together: a finding is located in its part;
- the skipping itself: typical benign values are screened out of the rules.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from urllib.parse import urlencode

import pytest
import re2  # type: ignore[import-untyped]  # no stubs
from hypothesis import given, settings
from hypothesis import strategies as st
from test_waf_screen import PIECES, TYPICAL, matches, values

from trustmesh.gateway import _wafbody as body
from trustmesh.gateway import _wafchecks as checks
from trustmesh.gateway import _wafscreen as waf_screen
from trustmesh.gateway import _wafshell as waf_shell
from trustmesh.gateway import waf
from trustmesh.gateway._wafrules import _SQL_RULES, _XSS_RULES


def one_by_one(strings: Sequence[str]) -> tuple[int, tuple[waf.Category, str]] | None:
    """What the filter found before values were screened together: each value alone."""
    for i, value in enumerate(strings):
        if (found := waf._value(value)) is not None:
            return i, found
    return None


def let_through(value: str) -> bool:
    """Whether the body screen sends ``value`` to check() whole."""
    return list(body.suspects([value], waf.WINDOW)) == [(0, None)]


def test_the_body_screen_runs_here() -> None:
    """RE2 is in the lock (pysigma requires it): the tests below test the screen, not
    the per-value path it falls back to."""
    assert body._search is not None
    assert list(body.suspects(["hello", "x' or 1=1 --"], waf.WINDOW)) == [(1, None)]


def test_a_plain_value_is_what_check_calls_plain() -> None:
    for code in range(128):
        char = chr(code)
        if char == char.lower() and char != body._JOIN:
            assert (char in body._PLAIN_ASCII) == bool(checks._PLAIN.fullmatch(char)), char


def checks_that_match(value: str) -> list[str]:
    """Each rule that matches ``value`` on its own (in a group whose characters it
    holds), not only the first, and the command-injection or traversal check."""
    v = value.lower()
    chars = waf_screen._specials(v)
    hits = [
        check_name
        for needs, group in (*_XSS_RULES, *_SQL_RULES)
        if not needs or not needs.isdisjoint(chars)
        for check_name, keyword, pattern in group
        if matches(pattern, keyword, v)
    ]
    shell = waf_shell._cmdi(v, chars) or waf_shell._traversal(v, chars)
    return hits + ([shell] if shell else [])


def test_every_check_that_matches_a_vector_is_let_through_the_body_screen() -> None:
    missed: set[tuple[str, str]] = set()
    for value in values():
        if not value.isascii() or body._JOIN in value:
            continue  # not screened together: a suspect as it is
        if (hits := checks_that_match(value)) and not let_through(value):
            missed.update((hit, value) for hit in hits)
    assert missed == set()


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([p for p in PIECES if p.isascii()]), max_size=12).map("".join))
def test_every_check_that_matches_a_generated_value_is_let_through_the_body_screen(
    value: str,
) -> None:
    assert not checks_that_match(value) or let_through(value)


def test_each_vector_is_found_alone_as_before() -> None:
    differ = [s for s in values() if waf._first([s]) != one_by_one([s])]
    assert differ == []


def test_vectors_screened_together_are_found_as_before() -> None:
    """Vector strings mixed with each other and with benign ones: the same first
    finding, at the same index."""
    strings = values()
    benign = [s for s in strings if waf._value(s) is None]
    assert len(benign) > 1_000
    rng = random.Random(17)
    for _ in range(400):
        batch = rng.sample(benign, rng.randrange(0, 30))
        batch.insert(rng.randrange(0, len(batch) + 1), rng.choice(strings))
        assert waf._first(batch) == one_by_one(batch), batch
    for start in range(0, len(benign), 50):
        assert waf._first(benign[start : start + 50]) is None


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.lists(st.sampled_from([*PIECES, "\x01"]), max_size=8).map("".join)))
def test_generated_values_screened_together_are_found_as_before(strings: list[str]) -> None:
    assert waf._first(strings) == one_by_one(strings)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=6))
def test_any_text_screened_together_is_found_as_before(strings: list[str]) -> None:
    assert waf._first(strings) == one_by_one(strings)


def test_values_that_cannot_be_screened_together_are_suspects_as_they_are() -> None:
    strings = ["plain", "Café", "a\x01b", "x=1"]
    assert list(body.suspects(strings, waf.WINDOW)) == [(1, None), (2, None), (3, "=")]


def test_typical_benign_values_are_screened_out_of_the_rules() -> None:
    ascii_only = [value for value in TYPICAL if value.isascii()]
    assert all(specials is not None for _, specials in body.suspects(ascii_only, waf.WINDOW))
    assert not list(
        body.suspects(["created_at", "Blue cotton T-shirt, size M", "en-GB"], waf.WINDOW)
    )


ATTACK = "1' or '1'='1' --"
PLACES = ["path", "query.q", "header.cookie.c", "header.x-note", "body/items/1/note"]


@pytest.mark.parametrize("place", PLACES)
def test_a_finding_among_all_of_a_requests_values_is_located_in_its_part(place: str) -> None:
    """All the parts of a request are screened together: the finding still names the
    part (and the name) it is in."""

    def at(here: str, benign: str) -> str:
        return ATTACK if place == here else benign

    found = waf.FastFilter().inspect(
        path="/shop/" + at("path", "items") + "/7",
        query=urlencode({"a": "1", "q": at("query.q", "blue shirt")}).encode(),
        headers=[
            (b"cookie", f"s=1; c={at('header.cookie.c', 'dark')}".encode()),
            (b"x-note", at("header.x-note", "Alice O'Brien").encode()),
        ],
        content_type="application/json",
        body=json.dumps(
            {"items": [{"note": "x"}, {"note": at("body/items/1/note", "see you (soon)")}]}
        ).encode(),
    )
    assert found == waf.Finding(waf.Category.SQLI, place, "sqli-quote-comment")


#: for each rule keyword of more than one character, a value its rule matches there
KEYWORD_EXAMPLES = {
    "script": "javascript:go()",
    "data": "data:text/html,x",
    "srcdoc": 'x srcdoc="y"',
    "formaction": "formaction=//x",
    "xlink:href": "xlink:href=x",
    "expression": "width:expression(go())",
    "document": "x=document.cookie",
    "location": "location.hash",
    "innerhtml": "el.innerhtml=x",
    "+adw-": "+adw-script",
    "union": "0 union all select 1",
    "sleep": "x sleep (5)",
    "waitfor": "1' waitfor delay '0:0:5'",
    "sys": "from sysobjects",
    "mysql.user": "from mysql.user",
    "@@": "select @@version",
    "into": "x into outfile y",
    "or": "x or 1=1",
    "and": "x and 2>1",
    "xor": "x xor 'a'='a'",
    "having": "x having 1=1",
    "where": "x where a=a",
    "||": "x || 1=1",
    "&&": "x && 1=1",
    "order": "1 order by 3--",
    "group": "1 group by 2#",
    "/*": "1 sel/**/ect",
    "create": "create table t (c int)",
    "insert": "insert into t values (1)",
    "select": "select * from t",
    "exec": "exec master.dbo.x",
}


def test_each_keywords_re2_form_finds_what_its_rule_matches() -> None:
    """Each entry of _KEYWORDS on its own (not another pattern of the screen) finds a
    value its rule matches at the keyword (in a group whose characters it holds)."""
    assert set(KEYWORD_EXAMPLES) == set(body._KEYWORDS)
    rules = [
        (needs, keyword, pattern)
        for needs, group in (*_XSS_RULES, *_SQL_RULES)
        for _, keyword, pattern in group
    ]
    for keyword, example in KEYWORD_EXAMPLES.items():
        assert any(
            k == keyword and (not needs or not needs.isdisjoint(example)) and matches(p, k, example)
            for needs, k, p in rules
        ), keyword
        assert re2.search(body._KEYWORDS[keyword], example) is not None, keyword
