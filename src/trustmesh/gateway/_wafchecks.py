"""The checks behind :mod:`trustmesh.gateway.waf`: one decoded value in, the first check
that matches out (its category name and its check name), or ``None``.

In this order, cheapest first, then most specific category first:

1. a value made only of ASCII letters, digits and ``_`` (most keys, ids, enum values)
   and holding no ``0x`` spelling matches nothing; then a value made only of letters,
   digits, spaces and ``. , @ ! ? + : -`` (names, e-mails, dates, phone numbers) matches
   nothing unless it holds ``..``, ``.ini``, ``union``, ``script:``, ``0x``, ``--`` or
   ``+adw-`` — no check below matches such a value without one of these;
2. XSS: generic shapes (``xss-script-tag``, ``xss-event-handler``: any ``on*=`` in a tag,
   ``xss-active-tag``: iframe, object, embed, svg, math, form…, ``xss-script-url``:
   ``javascript:``/``vbscript:``/``data:text/html``, ``xss-attribute``: ``srcdoc=``,
   ``formaction=``, ``xlink:href=``, CSS ``expression(``, ``xss-js``: a call of
   ``alert``/``confirm``/``prompt``/``eval``/``fromCharCode``, ``document.cookie``…,
   ``xss-utf7``), then libinjection-xss (when the value holds ``<`` or ``=``: its HTML5
   tokenizer needs a tag or an attribute), each again on what a browser reads (character
   references decoded twice, tab, line breaks and NUL removed);
3. SQLi: generic shapes (``sqli-union-select``, ``sqli-time-delay``, ``sqli-system-object``:
   catalog tables, ``@@version``, ``load_file(``, ``into outfile``, ``xp_cmdshell``…,
   ``sqli-tautology``: OR/AND then ``1=1``/``'a'='a``, ``sqli-quote-comment``,
   ``sqli-order-by-comment``, ``sqli-inline-comment``, ``sqli-stacked-query``,
   ``sqli-statement``: DDL, INSERT…VALUES, SELECT * FROM, a sub-select);
4. command injection, then traversal: the generic shapes listed in
   :mod:`trustmesh.gateway.waf` (only when the value holds a character they need);
5. libinjection-sqli, trusted only with a fingerprint of 4 tokens or more and a quote,
   ``;``, a parenthesis or a comment in the value: the short fingerprints (``sos``,
   ``1&1``, ``1c``) are what prose with quotes, a dash pair or "and" between numbers
   makes; a keyword-only or short attack is left to the rules above.

XSS and SQLi come before command injection and traversal: an XSS polyglot holds
backticks and an SQLi may read ``/etc/passwd``; a shell command that reads a system file
is command injection.

The modules behind it, one idea each: the rule tables (:mod:`._wafrules`), command
injection and traversal (:mod:`._wafshell`), the plans and the screen that decide what
a value costs (:mod:`._wafscreen`), the same screen over many values at once
(:mod:`._wafbody`), libinjection (:mod:`._waflibinjection`).
"""

from __future__ import annotations

import html
import re

from trustmesh.gateway._waflibinjection import _sqli_c, _xss_c
from trustmesh.gateway._wafrules import (
    _ENTITY,
    _SCRIPT_SCHEMES,
    _WHITESPACE_IN_SCHEME,
)
from trustmesh.gateway._wafscreen import _PLANS, _Plan, _plan, _screen, _specials, _Table
from trustmesh.gateway._wafshell import _cmdi, _traversal

__all__ = ["check", "check_rest"]

#: Nothing in the checks below can match a value made only of these.
_INERT = re.compile(r"[A-Za-z0-9_]*")
_DIGITS = frozenset("0123456789")  # what an inert value that is no identifier starts with
#: letters, digits, spaces and the punctuation of names, addresses, dates and prose: an
#: attack made only of these needs one of the hints check() tests (a dot-dot, a ``.ini`` file, a
#: UNION, a script URL, a ``0x`` spelling, a ``--`` comment, UTF-7's ``<``)
_PLAIN = re.compile(r"[\w .,@!?+:-]*")
_SQLI_MIN_TOKENS = 4


def _script_scheme(v: str, at: int) -> bool:
    """Whether ``script`` at ``at`` ends a scheme that runs script (``javascript:``…)."""
    if v.startswith("data", at):
        return True
    head = v[:at].rstrip()
    return any(
        head.endswith(name) and (len(head) == len(name) or not head[-len(name) - 1].isalnum())
        for name in _SCRIPT_SCHEMES
    )


def _first_of(table: _Table, v: str) -> str | None:
    """The first rule of ``table`` (in its order) whose pattern matches where its
    keyword occurs in ``v``, after one of its _BEFORE characters if it has them."""
    rules = table.known
    if table.words and any(map(v.__contains__, table.words)):
        rules = tuple(rule for rule in table.rules if rule[1] in v)
    for check, keyword, pattern, before in rules:
        at = v.find(keyword)
        while at != -1:
            if (
                (not before or (at and v[at - 1] in before))
                and pattern.match(v, at) is not None
                and (check != "xss-script-url" or _script_scheme(v, at))
            ):
                return check
            at = v.find(keyword, at + 1)
    return None


def _browser_read(value: str) -> str | None:
    """XSS in what a browser reads of ``value``: HTML character references decoded
    (twice: ``&amp;#106;``), the tab, line breaks and NUL it drops inside a URL scheme
    removed."""
    read = _WHITESPACE_IN_SCHEME.sub("", html.unescape(html.unescape(value)))
    if read == value:
        return None
    lowered = read.lower()
    chars = _specials(lowered)
    plan = _PLANS.get(chars) or _plan(chars)
    if plan.xss.rules and (found := _first_of(plan.xss, lowered)) is not None:
        return found
    if ("<" in read or "=" in read) and _xss_c(read.encode("utf-8", "surrogatepass")):
        return "libinjection-xss"
    return None


def check(value: str) -> tuple[str, str] | None:
    """The category and check name of the first check that matches ``value``."""
    # inert (_INERT: most keys, ids and enum values) with str methods, three times
    # cheaper than the regex: an ASCII value is inert when it is an identifier, letters
    # and digits, empty, or (the regex decides) starts with a digit
    if (
        value.isascii()
        and (
            value.isidentifier()
            or value.isalnum()
            or not value
            or (value[0] in _DIGITS and _INERT.fullmatch(value))
        )
        and "0x" not in value
    ):
        return None
    v = value.lower()
    if (
        _PLAIN.fullmatch(v)
        and ".." not in v
        and ".ini" not in v
        and "union" not in v
        and "script:" not in v
        and "0x" not in v
        and "--" not in v
        and "+adw-" not in v
    ):
        return None
    chars = _specials(v)
    plan = _PLANS.get(chars) or _plan(chars)
    return _checks(value, v, chars, plan, plan.always or _screen(v, plan))


def check_rest(value: str, specials: str) -> tuple[str, str] | None:
    """check() of a value that is not plain, in which the screen of many values
    (:func:`trustmesh.gateway._wafbody.suspects`) found nothing: libinjection and what a
    browser decodes only, planned from ``specials``, the value's characters of _RELEVANT
    that plain values do not hold (all that the gates of these checks test)."""
    chars = frozenset(specials)
    plan = _PLANS.get(chars) or _plan(chars)
    return _checks(value, value.lower(), chars, plan, plan.always)


def _unscreened(value: str) -> tuple[str, str] | None:
    """check() without the screen: every check runs (what check() must always answer)."""
    if _INERT.fullmatch(value) and "0x" not in value:
        return None
    v = value.lower()
    if (
        _PLAIN.fullmatch(v)
        and ".." not in v
        and ".ini" not in v
        and "union" not in v
        and "script:" not in v
        and "0x" not in v
        and "--" not in v
        and "+adw-" not in v
    ):
        return None
    chars = _specials(v)
    return _checks(value, v, chars, _PLANS.get(chars) or _plan(chars), True)


def _checks(
    value: str, v: str, chars: frozenset[str], plan: _Plan, rules: bool
) -> tuple[str, str] | None:
    """The checks, in order; the rule tables, command injection and traversal only when
    ``rules`` (when the screen cannot rule them out)."""
    if rules and plan.xss.rules and (found := _first_of(plan.xss, v)) is not None:
        return "xss", found
    data = b""
    if plan.xss_c:
        data = value.encode("utf-8", "surrogatepass")
        if _xss_c(data):
            return "xss", "libinjection-xss"
    if (
        plan.browser
        and (plan.browser == 2 or _ENTITY.search(v) is not None)
        and (found := _browser_read(value)) is not None
    ):
        return "xss", found
    if rules:
        if plan.sql.rules and (found := _first_of(plan.sql, v)) is not None:
            return "sqli", found
        if plan.shell or "0x2e" in v:
            if (found := _cmdi(v, chars)) is not None:
                return "cmdi", found
            if (found := _traversal(v, chars)) is not None:
                return "traversal", found
    if plan.sqli_c or "--" in v or "/*" in v:
        fingerprint = _sqli_c(data or value.encode("utf-8", "surrogatepass"))
        if fingerprint is not None and len(fingerprint) >= _SQLI_MIN_TOKENS:
            return "sqli", "libinjection-sqli"
    return None
