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


def test_every_check_that_matches_a_vector_is_let_through_the_body_screen() -> None:
    """Each rule on its own (in a group whose characters the value holds), not only the
    first that matches, and each command-injection and traversal check."""
    missed: set[tuple[str, str]] = set()
    for value in values():
        if not value.isascii() or body._JOIN in value:
            continue  # not screened together: a suspect as it is
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
        hits += [shell] if shell else []
        if hits and not let_through(value):
            missed.update((hit, value) for hit in hits)
    assert missed == set()


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
