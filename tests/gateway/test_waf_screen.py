"""The fast mode's screen and plans (:mod:`trustmesh.gateway._wafscreen`): they decide
what a value costs, never what it is found to be.

- on every string of the evaluation vectors (``../shared/vectors``: payloads, benign sets,
  libinjection's and the CRS regression requests' strings, as written and decoded) and on
  generated ones, check() with the screen answers what the checks without it answer;
- every rule of the tables, every command-injection and traversal check that matches a
  value is let through by the screen (a rule hidden behind an earlier one included), and
  the conditions read off the patterns (_BEFORE, _ALSO_NEEDS, the word after an operator)
  hold wherever a pattern matches;
- the plans choose the rules the groups of the tables would (a reference written as the
  tables were run before the plans);
- the skipping itself: typical benign values, quotes, parentheses, semicolons and URLs
  included, are screened out; each generic rule's own example is not.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_waf import ATTACKS, BENIGN, NEAR_MISSES, RULES

from trustmesh.gateway import _wafchecks as checks
from trustmesh.gateway import _wafrules as waf_rules
from trustmesh.gateway import _wafscreen as waf_screen
from trustmesh.gateway import _wafshell as waf_shell
from trustmesh.gateway._wafchecks import check

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"


@cache
def vector_strings() -> tuple[str, ...]:
    """Every string of the vectors, as written, and URL-decoded where it was encoded."""
    if not VECTORS.is_dir():
        pytest.skip(f"no evaluation vectors at {VECTORS}")
    out: list[str] = []
    for name in ("attacks.jsonl", "benign.jsonl"):
        for line in (VECTORS / "payloads" / name).read_text().splitlines():
            out.append(json.loads(line)["payload"])
    for path in sorted((VECTORS / "libinjection").glob("*.txt")):
        for line in path.read_text(errors="surrogateescape").splitlines():
            if line and not line.startswith("#"):
                out += [line, urllib.parse.unquote_plus(line)]
    for path in sorted((VECTORS / "crs").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            raw_path, _, query = str(row["uri"]).partition("?")
            out += [raw_path, query, urllib.parse.unquote_plus(raw_path)]
            data = "" if row["data"] is None else str(row["data"])
            for text in (query, data):
                for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
                    out += [name, value]
            out += [data, *(str(v) for v in dict(row["headers"]).values())]
    return tuple(dict.fromkeys(out))


def values() -> list[str]:
    """The vector strings, each also upper-cased (the checks read lower-cased values)."""
    strings = vector_strings()
    return [*strings, *(s.upper() for s in strings)]


def screened_in(value: str) -> bool:
    """Whether check() sends ``value`` past the screen to every check."""
    v = value.lower()
    chars = waf_screen._specials(v)
    plan = waf_screen._plan(chars)
    return plan.always or waf_screen._screen(v, plan)


# -- no answer changes -----------------------------------------------------------------
def test_the_vectors_are_all_there() -> None:
    strings = vector_strings()
    found = sum(checks._unscreened(s) is not None for s in strings)
    assert len(strings) > 10_000
    assert found > 3_000  # so that the test below compares findings, not only passes


def test_the_screen_changes_no_answer_on_the_vectors() -> None:
    differ = [s for s in values() if check(s) != checks._unscreened(s)]
    assert differ == []


# what the checks look for, and what benign values hold, for generated values
PIECES = [
    *"'\"`;()<>=&|$%{}[]#*/\\.,-+:@!?_ \t\n\r\x00\uff0e",
    *("0x2e", "0x2f", "--", "/*", "*/", "..", "../", "..\\", "%2e", "%u002e", "%c0%ae"),
    *("&#x09;", "&lt;", "&amp;", "+adw-", "://", "file", "php", "etc/passwd", "proc/self/"),
    *("boot.ini", "c:\\windows", "bin/", "/dev/tcp/", "${ifs}", "$(", "<?php", "<!--#exec"),
    *("union", "select", "all", "from", "where", "or", "and", "xor", "having", "like", "1=1"),
    *("sleep", "benchmark", "waitfor delay '", "information", "pg", "xp", "sp", "load"),
    *("order by 1", "group by 2", "insert into", "values", "create table", "exec", "drop"),
    *("script", "javascript:", "data:text/html", "alert", "prompt", "eval", "document"),
    *("location", "srcdoc", "onload", "expression", "svg", "iframe", "system", "popen"),
    *("os.system", "passthru", "net user", "cat", "id", "ls", "whoami", "nc", "python3"),
    *("O'Brien", "Tom & Jerry", "e.g.", "https://a.example/p?q=1&r=2", "rv:125.0", "x86_64"),
    *("Mozilla/5.0 (X11; Linux)", "12", "a", "The", "é", "K", "İ", "c:/", "d:\\", "inetpub"),
    *("中文", "，", "🎉", "ｕｎｉｏｎ", "\u2215", "\uff0f", "\u2216"),
]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_the_screen_changes_no_answer_on_generated_values(value: str) -> None:
    assert check(value) == checks._unscreened(value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_the_screen_changes_no_answer_on_any_text(value: str) -> None:
    assert check(value) == checks._unscreened(value)


def matches(pattern: re.Pattern[str], keyword: str, v: str) -> list[int]:
    """Where ``pattern`` matches at an occurrence of ``keyword`` in ``v``."""
    at, found = v.find(keyword), []
    while at != -1:
        if pattern.match(v, at) is not None:
            found.append(at)
        at = v.find(keyword, at + 1)
    return found


def test_every_rule_that_matches_a_vector_is_let_through_the_screen() -> None:
    """Each rule on its own (in a group whose characters the value holds, as the tables
    run), not only the first that matches: a rule hidden behind an earlier one must be
    let through too."""
    groups = (*waf_rules._XSS_RULES, *waf_rules._SQL_RULES)
    missed: set[tuple[str, str, str]] = set()
    seen: set[tuple[str, str]] = set()
    for value in values():
        v = value.lower()
        chars = waf_screen._specials(v)
        shell = (
            waf_shell._cmdi(v, chars) or waf_shell._traversal(v, chars)
            if not waf_shell._ANY.isdisjoint(chars) or "0x2e" in v
            else None
        )
        hits = [
            (c, k)
            for needs, group in groups
            if not needs or not needs.isdisjoint(chars)
            for c, k, p in group
            if matches(p, k, v)
        ] + ([("", shell)] if shell else [])
        seen.update(hits)
        if hits and not screened_in(value):
            missed.update((c, k, value) for c, k in hits)
    assert missed == set()
    assert len(seen) > 40  # most rules and shell checks matched some vector


def test_what_the_patterns_need_holds_wherever_they_match() -> None:
    """_BEFORE (the letter before a keyword), _ALSO_NEEDS (a character besides the
    keyword's) and _CODE_EXEC_BEFORE, on every vector where the pattern matches."""
    rules = {
        (c, k): p
        for _, group in (*waf_rules._XSS_RULES, *waf_rules._SQL_RULES)
        for c, k, p in group
    }
    assert set(waf_rules._BEFORE) <= set(rules)
    assert set(waf_rules._ALSO_NEEDS) <= set(rules)
    wrong = []
    for value in values():
        v = value.lower()
        for (check_name, keyword), before in waf_rules._BEFORE.items():
            for at in matches(rules[check_name, keyword], keyword, v):
                if not (at and v[at - 1] in before):
                    wrong.append((check_name, value))
        for (check_name, keyword), also in waf_rules._ALSO_NEEDS.items():
            if matches(rules[check_name, keyword], keyword, v) and not set(also) & set(v):
                wrong.append((check_name, value))
        for at in matches(waf_shell._CODE_EXEC, "(", v):
            if not (at and v[at - 1] in waf_shell._CODE_EXEC_BEFORE):
                wrong.append(("cmdi-code-exec", value))
    assert wrong == []


# the word after an operator, as it was matched before it was split in two
WORD_THEN_TAIL = re.compile(rf"{waf_shell._WORD_AFTER_OPERATOR}(?={waf_shell._SHELL_TAIL})")


def command_after_operator_before(v: str) -> bool:
    for operator in waf_shell._OPERATORS:
        for at in (i for i, c in enumerate(v) if c == operator):
            match = WORD_THEN_TAIL.match(v, at)
            if match is not None and match[1] in waf_shell._COMMAND_SET:
                return True
    return False


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10).map("".join))
def test_a_command_after_an_operator_is_found_as_before(value: str) -> None:
    v = value.lower()
    operators = waf_shell._OPERATORS & waf_screen._specials(v)
    assert waf_shell._command_after_operator(v, operators) == command_after_operator_before(v)


def test_a_command_after_an_operator_is_found_as_before_on_the_vectors() -> None:
    for value in values():
        v = value.lower()
        operators = waf_shell._OPERATORS & waf_screen._specials(v)
        assert waf_shell._command_after_operator(v, operators) == command_after_operator_before(v)


# -- the plans choose the rules the groups would ----------------------------------------
def first_by_groups(groups: waf_rules.Groups, v: str, chars: frozenset[str]) -> str | None:
    """The first matching rule, as the tables were run before plans: group by group,
    a group skipped when the value holds none of the characters it needs."""
    for needs, rules in groups:
        if needs and needs.isdisjoint(chars):
            continue
        for check_name, keyword, pattern in rules:
            for at in matches(pattern, keyword, v):
                if check_name != "xss-script-url" or checks._script_scheme(v, at):
                    return check_name
    return None


def test_a_plan_finds_the_rule_the_groups_find() -> None:
    for value in values():
        v = value.lower()
        chars = waf_screen._specials(v)
        plan = waf_screen._plan(chars)
        for table, groups in ((plan.xss, waf_rules._XSS_RULES), (plan.sql, waf_rules._SQL_RULES)):
            assert checks._first_of(table, v) == first_by_groups(groups, v, chars), value


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=60))
def test_the_special_characters_are_those_the_regex_finds(text: str) -> None:
    v = text.lower()
    assert (
        waf_screen._specials(v) == frozenset(waf_screen._SPECIAL.findall(v)) & waf_screen._RELEVANT
    )


def test_a_plan_depends_only_on_the_characters_the_checks_test() -> None:
    """Every special character a value holds, or only those of _RELEVANT (what _specials
    keeps): the same plan, the same command-injection and traversal answers."""
    assert waf_screen._RELEVANT.isdisjoint("abcdefghijklmnopqrstuvwxyz0123456789 ")
    for value in [*values(), *TYPICAL, "Café crème 🎉", "مرحبا بالعالم!", "中文，标点。(注)"]:
        v = value.lower()
        every = frozenset(waf_screen._SPECIAL.findall(v))
        kept = waf_screen._specials(v)
        assert waf_screen._plan(every) == waf_screen._plan(kept), value
        assert waf_shell._cmdi(v, every) == waf_shell._cmdi(v, kept), value
        assert waf_shell._traversal(v, every) == waf_shell._traversal(v, kept), value


@settings(max_examples=300, deadline=None)
@given(st.sets(st.text("abcn23", max_size=5), max_size=12), st.text("abcn23", max_size=6))
def test_a_trie_matches_exactly_its_words(words: set[str], candidate: str) -> None:
    pattern = re.compile(f"(?:{waf_screen._trie(words)})")
    assert (pattern.fullmatch(candidate) is not None) == (
        candidate in words or (not words and not candidate)
    )


def test_the_plan_cache_stays_bounded() -> None:
    relevant = sorted(waf_screen._RELEVANT)
    for n in range(waf_screen._PLANS_MAX + 10):  # that many sets of special characters
        check("x " + "".join(relevant[b] for b in range(12) if n >> b & 1) + ";")
        assert len(waf_screen._PLANS) <= waf_screen._PLANS_MAX
    assert check("1' or '1'='1' --") == ("sqli", "sqli-quote-comment")


# -- what is skipped, and what is not --------------------------------------------------
TYPICAL = [
    "Alice O'Brien",
    "Happy birthday! Hope you like it, see you on Saturday :)",
    "Please leave the parcel with the neighbour at number 12 if nobody is home; the bell "
    "does not work, so knock twice. Select your size at checkout next time.",
    "https://www.example.com/campaigns/spring?utm_source=newsletter&utm_medium=email",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
    "session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark",
    "1/2 cup sugar (sifted), 3.5 oz; bake at 180°C",
    'She said "fine" (twice) & left.',
    "2024-05-01T12:34:56Z",
    "C:\\Users\\bob\\report.docx",
    "Tom & Jerry; a cat-and-mouse classic",
]


@pytest.mark.parametrize("value", TYPICAL)
def test_typical_benign_values_skip_the_rules(value: str) -> None:
    assert check(value) is None
    assert not screened_in(value)


@pytest.mark.parametrize("value", sorted({*BENIGN, *NEAR_MISSES}))
def test_benign_strings_pass_with_or_without_the_screen(value: str) -> None:
    assert check(value) is None
    assert checks._unscreened(value) is None


@pytest.mark.parametrize(
    "value",
    [v for v, _, name in RULES if not name.startswith("libinjection")] + [v for v, _ in ATTACKS],
)
def test_each_rule_example_goes_through_the_screen(value: str) -> None:
    assert screened_in(value)
    assert check(value) == checks._unscreened(value) is not None


# one value per context the screen lets through (each found by the check it stands for)
CONTEXTS = [
    *("alert(1)", "confirm(1)", "prompt(1)", "eval(x)", "String.fromCharCode(72)"),
    *("x sleep(5)", "benchmark(100,md5(1))", "dbms_pipe.receive_message(('a'),10)"),
    *("system('id')", "exec('ls')", "passthru($x)", "popen('x')", "proc_open('x')"),
    *("os.system(x)", "1 and (select @@version)", "(x) load_file(y)"),
    *("(x) from information_schema.tables", "(x) pg_shadow", "(x) sqlite_master"),
    *("(x) xp_cmdshell", "(x) sp_executesql", "(x) utl_http.request"),
    *("1; drop table x", "x; ls -la", "x & whoami", "x | id", "x\nid", "x\rid", "x;$foo;"),
    *("$(id)", "${ifs}", "{cat,/etc/passwd}", "bob' --", 'bob" #'),
    *("x /bin/sh", "/dev/tcp/1.2.3.4/80", "1 /*!50000select*/", "etc/passwd"),
    *("proc/self/environ", "c:/inetpub/x", "winnt/system32", "windows/system32"),
    *("etc\\passwd", "proc\\self\\x", "c:\\inetpub", "windows\\system32", "winnt\\repair"),
    *("file:///x", "php://filter", "phar://x", "zip://x", "expect://id", "glob://x"),
    *("0x2e0x2e0x2fx", "../x", "boot.ini", "<x onload=1>", "`id`", "a\x00b"),
    *("%u002e%u002e%u2215x", "\uff0e\uff0e/x"),
]


@pytest.mark.parametrize("value", CONTEXTS)
def test_each_context_of_the_screen_lets_its_attack_through(value: str) -> None:
    assert screened_in(value)
    assert check(value) == checks._unscreened(value) is not None


@settings(max_examples=500, deadline=None)
@given(st.text("aAzZ09_xX-.", max_size=12))
def test_inert_values_are_found_as_the_regex_finds_them(value: str) -> None:
    """check()'s shortcut for inert values (an identifier, letters and digits) answers
    what the regex (_INERT) and the checks after it answer."""
    assert check(value) == checks._unscreened(value)
    if checks._INERT.fullmatch(value) and "0x" not in value:
        assert check(value) is None
