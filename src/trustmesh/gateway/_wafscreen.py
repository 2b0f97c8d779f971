"""The fast mode's plans and screen (:mod:`trustmesh.gateway._wafchecks` uses them): what
a value costs, never what it is found to be.

What a value may match is planned from its special characters (those not ``a``–``z``, a
digit or a space) and cached per set of them (:class:`_Plan`): the rules of the groups
whose needs it meets, and the gates of the other checks. Then the screen (see
``_SCREENS``): every rule of the tables and every command-injection and traversal check
matches only where the value holds its keyword, or at a special character in a context
the screen's patterns find (a parenthesis after ``alert``, ``sleep``, ``system``…, an
operator before a command, a quote before a comment…); a value where they find none of
these — most benign text, even with quotes, parentheses, semicolons or URLs — goes to
libinjection and to what a browser decodes only. The screen is a superset of the checks
it stands for, so it changes no answer (``_unscreened``, the checks without it, answers
the same: ``tests/gateway/test_waf_screen.py``), only what an answer costs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import NamedTuple

from trustmesh.gateway._wafrules import (
    _ALSO_NEEDS,
    _BEFORE,
    _DECODED_BY_BROWSER,
    _SQL_RULES,
    _SQL_SIGNIFICANT,
    _XSS_RULES,
    Groups,
    Planned,
)
from trustmesh.gateway._wafshell import _ANY, _BRACE, _COMMAND_SET, _OPERATORS

#: the characters the rule groups and gates look for (letters, digits and spaces never)
_SPECIAL = re.compile(r"[^a-z0-9 ]")


def _specials(v: str) -> frozenset[str]:
    """The special characters of ``v`` (lower-cased) that a gate, a group's needs or a
    screen tests (_RELEVANT; an ASCII value through ``bytes.translate``, three times
    cheaper than a regex): a value's plan depends on nothing else, so that text in
    other scripts, or with other punctuation, shares the plans of a few sets."""
    if v.isascii():
        return frozenset(v.encode("ascii").translate(None, _IRRELEVANT_ASCII).decode("ascii"))
    return frozenset(_RE_RELEVANT.findall(v))


class _Table(NamedTuple):
    """The rules of one table (XSS or SQL) that a value may match, given its special
    characters: all of them (``rules``: group by group in the table's order, a group
    left out when the value holds none of the characters it needs, a rule when it holds
    none of its _ALSO_NEEDS), those whose keyword the value is known to hold (``known``:
    a special character it holds), and the other keywords (``words``: when the value
    holds none of them, ``known`` are all the rules to try)."""

    rules: tuple[Planned, ...]
    known: tuple[Planned, ...]
    words: tuple[str, ...]


def _table(groups: Groups, chars: frozenset[str]) -> _Table:
    rules = tuple(
        (*rule, _BEFORE.get(rule[:2], ""))
        for needs, group in groups
        if not needs or not needs.isdisjoint(chars)
        for rule in group
        if (also := _ALSO_NEEDS.get(rule[:2])) is None or not chars.isdisjoint(also)
    )
    known = tuple(rule for rule in rules if rule[1] in chars)
    words = tuple(dict.fromkeys(rule[1] for rule in rules if rule[1] not in chars))
    return _Table(rules, known, words)


class _Plan(NamedTuple):
    """What check() runs on a value, decided by its special characters alone: the rules
    of the groups whose needs it meets and the gates of the other checks. Values with
    the same special characters share one (see _plan)."""

    xss: _Table
    #: libinjection-xss: a ``<`` or a ``=``
    xss_c: bool
    #: what a browser decodes: 0 nothing, 1 only ``&`` (a reference search decides), 2 more
    browser: int
    sql: _Table
    #: command injection and traversal (also when the value holds ``0x2e``)
    shell: bool
    #: libinjection-sqli (also when the value holds ``--`` or ``/*``)
    sqli_c: bool
    #: a character of _ALWAYS: every check runs
    always: bool
    #: the _SCREENS of the value's characters
    screens: tuple[re.Pattern[str], ...]
    #: the keywords of both tables' rules not known to be there, and _SHELL_WORDS: a
    #: value holding none of them, in which no screen finds anything matches no rule of
    #: the tables, no command injection and no traversal check
    words: tuple[str, ...]


#: plans by special characters; few distinct sets occur, but a client chooses them, so
#: the cache is emptied when it holds _PLANS_MAX
_PLANS: dict[frozenset[str], _Plan] = {}
_PLANS_MAX = 1024


def _plan(chars: frozenset[str]) -> _Plan:
    browser = 0 if _DECODED_BY_BROWSER.isdisjoint(chars) else 1
    if browser and not _DECODED_BY_BROWSER.isdisjoint(chars - {"&"}):
        browser = 2
    xss, sql = _table(_XSS_RULES, chars), _table(_SQL_RULES, chars)
    plan = _Plan(
        xss=xss,
        xss_c="<" in chars or "=" in chars,
        browser=browser,
        sql=sql,
        shell=not _ANY.isdisjoint(chars),  # nosec B604 # a plan field (shell metacharacters present), no subprocess
        sqli_c=not _SQL_SIGNIFICANT.isdisjoint(chars),
        always=not _ALWAYS.isdisjoint(chars),
        screens=tuple(screen for char, screen in _RE_SCREENS.items() if char in chars),
        words=tuple(
            dict.fromkeys(
                (*xss.words, *sql.words, *(w for c, w in _SHELL_WORDS if not c or c in chars))
            )
        ),
    )
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[chars] = plan
    return plan


# -- the screen -----------------------------------------------------------------------
# Every rule of the two tables and every command-injection and traversal check matches
# only where a value holds one of its keywords (a plan's words: union, script, or…,
# searched with ``in``), or holds one of the characters of _ALWAYS, or at one of the
# characters of _SCREENS in the context its pattern gives (a superset of what each check
# it stands for matches there). A value with none of these can match none of those
# checks: only libinjection and what a browser decodes are left (see check()). One
# pattern per character, as each starts with it: the regex engine skips to it like
# str.find does (a pattern starting with one of several characters is searched about
# ten times slower), and a value's plan holds only those of its characters.


def _trie(words: Iterable[str]) -> str:
    """A regex matching exactly ``words`` (the empty string among them too), factored
    by their first letters: the regex engine tries an alternation's branches one by one,
    and a hundred commands tried at every operator of a value cost microseconds."""
    ordered = sorted(set(words))
    branches: list[str] = [
        re.escape(letter) + _trie(word[1:] for word in group)
        for letter, group in itertools.groupby((w for w in ordered if w), key=lambda w: w[0])
    ]
    if not branches:
        return ""
    if len(branches) == 1 and ordered[0]:
        return branches[0]
    return "(?:" + "|".join(branches) + ")" + ("?" if not ordered[0] else "")


#: XSS tags, cmdi-code-exec's ``<?php``, cmdi-ssi; what only a backtick, a NUL, a percent
#: escape or a fullwidth dot starts (xss-js, cmdi-subshell, traversal-nul,
#: traversal-dotdot-unicode): a value holding one of these goes to every check
_ALWAYS = frozenset("<`\x00%\uff0e")
# cmdi-shell-metachar (a command, the whole word), cmdi-variable (a variable) and
# cmdi-net-admin (net), after one or two operators: possessive, as the word after the
# operators and the spaces (and a quote) starts at one place only
_OPERATOR_THEN = rf"[;&|`\n\r]?+\s*+(?:['\"]?+{_trie(_COMMAND_SET)}(?![a-z0-9])|\$)"
_SCREENS = {
    # a call: xss-js, sqli-time-delay, cmdi-code-exec (the name before the parenthesis,
    # its last letter first: one test rules out most parentheses), sqli-statement's
    # sub-select
    "(": r"\((?:(?<=[tmlepkcun]\()(?:(?<=alert\()|(?<=confirm\()|(?<=prompt\()|(?<=eval\()"
    r"|(?<=fromcharcode\()|(?<=sleep\()|(?<=benchmark\()|(?<=receive_message\()"
    r"|(?<=system\()|(?<=exec\()|(?<=passthru\()|(?<=popen\()|(?<=proc_open\())|\s*select)",
    # sqli-system-object's names with an underscore
    "_": r"_(?:(?<=information_)|(?<=pg_)|(?<=sqlite_)|(?<=xp_)|(?<=sp_)|(?<=utl_)|(?<=load_))",
    # sqli-stacked-query; and the shell's operators
    ";": r";(?:\s*(?:select|insert|update|delete|drop|create|alter|truncate|exec|declare"
    rf"|shutdown|waitfor)|{_OPERATOR_THEN})",
    **{op: re.escape(op) + _OPERATOR_THEN for op in "&|\n\r"},
    # cmdi-subshell ($(…), cmdi-ifs
    "$": r"\$(?:\(|\{?ifs)",
    # cmdi-brace-expansion
    "{": _BRACE,
    # sqli-quote-comment
    "'": r"'\s*\)*\s*;?\s*(?:(?:--|#)[\s+-]*$|/\*)",
    '"': r"\"\s*\)*\s*;?\s*(?:(?:--|#)[\s+-]*$|/\*)",
    # cmdi-binary-path, cmdi-dev-socket, sqli-inline-comment, and a system file after its
    # directory or a drive (traversal-system-file; the letter before the slash first)
    "/": r"/(?:s?bin/|dev/(?:tcp|udp)/|\*|(?<=[cst:]/)(?:(?<=etc/)|(?<=proc/)|(?<=windows/)"
    r"|(?<=winnt/)|(?<=:/)(?:windows|winnt|inetpub|boot\.ini)))",
    "\\": r"\\(?:(?<=etc\\)|(?<=proc\\)|(?<=windows\\)|(?<=winnt\\)"
    r"|(?<=:\\)(?:windows|winnt|inetpub|boot\.ini))",
    # traversal-file-scheme
    ":": r"://(?:(?<=file://)|(?<=php://)|(?<=phar://)|(?<=zip://)|(?<=expect://)"
    r"|(?<=glob://))",
}
_RE_SCREENS = {char: re.compile(pattern) for char, pattern in _SCREENS.items()}
#: the words command injection and traversal need, by the character they need ("":
#: none): the 0x2e spelling of a dot (traversal-dotdot), a dot-dot and ``.ini``
#: (traversal-dotdot, traversal-system-file: words, as values hold dots often)
_SHELL_WORDS = (("", "0x2e"), (".", ".."), (".", ".ini"))


#: every character that a plan or a check of step 4 tests: the groups' needs and
#: _ALSO_NEEDS, the keywords that are one character, what the other checks are gated
#: on, _ALWAYS, _SCREENS and _SHELL_WORDS (no letter, digit or space)
_RELEVANT = frozenset().union(
    *(needs for needs, _ in (*_XSS_RULES, *_SQL_RULES)),
    *_ALSO_NEEDS.values(),
    (rule[1] for _, group in (*_XSS_RULES, *_SQL_RULES) for rule in group if len(rule[1]) == 1),
    _ANY,
    _OPERATORS,
    _SQL_SIGNIFICANT,
    _DECODED_BY_BROWSER,
    "<=",
    _ALWAYS,
    _SCREENS,
    (char for char, _ in _SHELL_WORDS if char),
)
_IRRELEVANT_ASCII = bytes(b for b in range(128) if chr(b) not in _RELEVANT)
_RE_RELEVANT = re.compile("[" + "".join(re.escape(c) for c in sorted(_RELEVANT)) + "]")


def _screen(v: str, plan: _Plan) -> bool:
    """Whether a rule of the tables, a command-injection or a traversal check may match
    ``v`` (lower-cased, its plan ``plan``): a screen of its characters finds its context,
    or ``v`` holds a word of its plan."""
    for screen in plan.screens:
        if screen.search(v) is not None:
            return True
    for word in plan.words:  # noqa: SIM110 - a loop: any() over a generator costs twice as much
        if word in v:
            return True
    return False
