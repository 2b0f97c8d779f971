"""The screen of many values at once (a request's JSON strings, its query or form fields,
its headers): which of them :func:`trustmesh.gateway._wafchecks.check` may find
something in, in a few C-level passes over all of them instead of a Python call each.

The values are lower-cased and joined by ``_JOIN`` (a character no check looks for);
then

1. ``bytes.translate`` deletes every character a plain value is made of (``_PLAIN_ASCII``:
   letters, digits, spaces, ``_ . , @ ! ? + : -``) and every character no check tests
   (not in ``_RELEVANT``): what is left between the separators is, for each value that
   is not plain, the special characters its plan and gates depend on; a value holding
   one of ``_ALWAYS`` (``<``, a backtick, a NUL, ``%``) goes to check() whole;
2. one RE2 search (a DFA: its cost grows with the text, not with the number of patterns
   it looks for) finds, in any value, where a rule, a command-injection or a traversal
   check may match: the context of a screened character (``_CONTEXTS``, each the RE2
   form of a pattern of ``_SCREENS``: a look-behind becomes the text before it, a
   possessive quantifier a greedy one, a look-ahead the character after or the end),
   the keyword of a rule with what the rule needs after it (``_KEYWORDS``), a word of
   ``_SHELL_WORDS``; and ``--``, what a plain value may hold that libinjection-sqli
   looks at. A value found here goes to check() whole. The patterns remember nothing
   across a value (but UNION before SELECT), so that no value makes the DFA build
   state after state.

A value found only in step 1 goes to :func:`~trustmesh.gateway._wafchecks.check_rest`:
libinjection and what a browser decodes, no rule, command injection or traversal (none
can match there: step 2 is a superset of them; ``tests/gateway/test_waf_body.py`` holds
it to that on every vector string, and the filter to the same findings together as
alone). A value found by neither is one check() finds nothing in: plain (check() finds
nothing in it but what a rule or libinjection-sqli after ``--`` would, both of step 2)
or holding none of the characters the gates test.

Only ASCII values are screened together (``_JOIN`` stands for the end of a value; RE2
reads bytes), and none longer than a window (a window's end is an end for the
patterns that look for one); any other value is a suspect as it is. RE2
(``google-re2``, in the lock as pysigma requires it) is called through its compiled
object when it answers a self-test at import; without it every value is a suspect and
check() screens each alone.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from trustmesh.gateway._wafrules import _SQL_RULES, _XSS_RULES
from trustmesh.gateway._wafscreen import _ALWAYS, _RELEVANT, _SCREENS, _SHELL_WORDS
from trustmesh.gateway._wafshell import _COMMANDS

__all__ = ["suspects"]

#: what joins the values: no check, screen or plan looks for it
_JOIN = "\x01"
#: what a plain value is made of, lower-cased (check()'s ``_PLAIN`` over ASCII)
_PLAIN_ASCII = "abcdefghijklmnopqrstuvwxyz0123456789_ .,@!?+:-"
#: what a value's plan and gates never depend on once the screen found nothing: what
#: plain values are made of, and every character of no interest to a check (_RELEVANT)
_PLAIN_OR_IRRELEVANT = bytes(
    b for b in range(128) if chr(b) != _JOIN and (chr(b) in _PLAIN_ASCII or chr(b) not in _RELEVANT)
)
#: the separators before a value that is not plain, and its run of special characters
#: (searched for in a text that does not end with separators: each match then starts
#: where the one before it ended; separators at the end, with no run after them, would be
#: tried one by one to the end, quadratic in their number)
_RUN = re.compile(rb"(\x01*)([^\x01]+)")

# -- the RE2 pattern ----------------------------------------------------------------------
#: what Python's ``\s`` matches in ASCII (RE2's ``\s`` leaves out 0x0b and 0x1c–0x1f)
_S = r"[\t-\r\x1c-\x1f ]"
#: what a value ends at: the separator, or the end of the text
_END = r"(?:\x01|$)"
_THEN_COMMAND = rf"[;&|`\n\r]?{_S}*(?:['\"]?(?:{_COMMANDS})(?:[^a-z0-9]|$)|\$)"
_QUOTE_THEN_COMMENT = rf"{_S}*\)*{_S}*;?{_S}*(?:(?:--|#)[\t-\r\x1c-\x1f +-]*{_END}|/\*)"
_SYSTEM_DIRS = r"(?:etc|proc|windows|winnt)"
_DRIVE_DIRS = r"(?:windows|winnt|inetpub|boot\.ini)"
#: the RE2 form of each pattern of _SCREENS (a superset of it; one per character)
_CONTEXTS = {
    "(": r"(?:alert|confirm|prompt|eval|fromcharcode|sleep|benchmark|receive_message"
    rf"|system|exec|passthru|popen|proc_open)\(|\({_S}*select",
    "_": r"(?:information|pg|sqlite|xp|sp|utl|load)_",
    ";": rf";{_S}*(?:select|insert|update|delete|drop|create|alter|truncate|exec|declare"
    rf"|shutdown|waitfor)|;{_THEN_COMMAND}",
    **{op: re.escape(op) + _THEN_COMMAND for op in "&|\n\r"},
    "$": r"\$(?:\(|\{?ifs)",
    "{": rf"\{{{_S}*(?:{_COMMANDS}),",
    "'": "'" + _QUOTE_THEN_COMMENT,
    '"': '"' + _QUOTE_THEN_COMMENT,
    "/": rf"/(?:s?bin/|dev/(?:tcp|udp)/|\*)|{_SYSTEM_DIRS}/|:/{_DRIVE_DIRS}",
    "\\": rf"{_SYSTEM_DIRS}\\|:\\{_DRIVE_DIRS}",
    ":": r"(?:file|php|phar|zip|expect|glob)://",
}
if set(_CONTEXTS) != set(_SCREENS):
    raise ImportError("each screened character needs its RE2 context")
#: a comparison after a boolean keyword (sqli-tautology's _COMPARISON: numbers, or a word
#: quoted or not, then an operator or ``like``)
_COMPARED = (
    r"[\t-\r\x1c-\x1f (]+(?:[0-9]+(?:\.[0-9]+)?[\t-\r\x1c-\x1f )]*[=<>!]"
    r"|['\"]?[a-z0-9_]+['\"]?[\t-\r\x1c-\x1f )]*(?:=|like))"
)
#: the RE2 form of each rule whose keyword is more than one character: the keyword and
#: what the rule needs after it (a superset of what the rule matches there; no
#: look-around, no back-reference, and, but for UNION's SELECT, nothing to remember
#: across a value, so that the DFA stays small whatever a value holds)
_KEYWORDS = {
    # XSS
    "script": rf"script{_S}*:",
    "data": rf"data{_S}*:{_S}*(?:text/html|image/svg|application/)",
    "srcdoc": rf"srcdoc{_S}*=",
    "formaction": rf"formaction{_S}*=",
    "xlink:href": rf"xlink:href{_S}*=",
    "expression": rf"expression{_S}*\(",
    "document": rf"document{_S}*\.",
    "location": rf"location{_S}*\.",
    "innerhtml": rf"innerhtml{_S}*=",
    "+adw-": r"\+adw-",
    # SQL injection
    "union": r"union[^\x01]*select",
    "sleep": rf"sleep{_S}+\(",
    "waitfor": rf"waitfor{_S}+(?:delay|time)",
    "sys": r"sys(?:objects|columns|users|databases|logins|ibm\.|cat\.)",
    "mysql.user": r"mysql\.user",
    "@@": "@@",
    "into": rf"into{_S}+(?:out|dump)file",
    **{keyword: keyword + _COMPARED for keyword in ("or", "and", "xor", "having", "where")},
    "||": r"\|\|" + _COMPARED.replace("+", "*", 1),
    "&&": "&&" + _COMPARED.replace("+", "*", 1),
    "order": rf"order{_S}+by{_S}+[0-9]",
    "group": rf"group{_S}+by{_S}+[0-9]",
    "/*": r"/\*",
    "create": rf"create{_S}+(?:table|user)",
    "insert": rf"insert{_S}+into",
    "select": rf"select{_S}+(?:\*|current_user|session_user|system_user|user\(|version\("
    r"|database\(|@@)",
    "exec": rf"exec(?:ute)?{_S}+(?:master\.|xp_|sp_)",
}
_LONG_KEYWORDS = {
    keyword
    for _, group in (*_XSS_RULES, *_SQL_RULES)
    for _, keyword, _ in group
    if len(keyword) > 1
}
if set(_KEYWORDS) != _LONG_KEYWORDS:
    raise ImportError("each rule's keyword needs its RE2 form")
_PATTERN = "|".join(
    [*_CONTEXTS.values(), *_KEYWORDS.values(), *(re.escape(w) for _, w in _SHELL_WORDS), "--"]
)


def _re2_search() -> Callable[[bytes, int], int] | None:
    """Where the first match of _PATTERN in ASCII bytes starts, from a position (-1:
    none), through RE2's compiled object if it answers a self-test; ``None`` otherwise."""
    try:
        import re2  # type: ignore[import-untyped]  # no stubs

        options = re2.Options()
        options.encoding = re2.Options.Encoding.LATIN1
        options.never_capture = True
        compiled = re2._re2.RE2(_PATTERN.encode("latin-1"), options)
        unanchored = re2._Anchor.UNANCHORED
        match = compiled.Match
    except (ImportError, AttributeError, TypeError):
        return None
    if not compiled.ok():
        return None

    def search(data: bytes, start: int) -> int:
        at: int = match(unanchored, data, start, len(data))[0][0]
        return at

    probes = {
        b"o'brien\x01hello": -1,
        b"a\x01b; cat /etc/x": 3,
        b"x\x01union all select": 2,
        b"created_at\x01x": -1,
        b"x\x01it's -- fine": 7,
        b"a=b\x01or c": -1,
        b"a\x01b or c=d": 4,
    }
    if any(search(probe, 0) != at for probe, at in probes.items()):
        return None
    return search


_search = _re2_search()


def suspects(values: Sequence[str], longest: int) -> Iterable[tuple[int, str | None]]:
    """The values check() may find something in, by index (in order), each with
    ``None`` when check() must take it whole, or with its special characters that are
    not those of a plain value (those of _RELEVANT), when the screen found nothing in it:
    only libinjection and what a browser decodes can find something there
    (:func:`~trustmesh.gateway._wafchecks.check_rest`). A value left out check() would
    find nothing in. A value longer than ``longest`` (checked in windows), not ASCII or
    holding _JOIN is a suspect as it is. Past the first value the RE2 search finds
    something in, the rest is searched only as far as it is iterated (a caller that
    stops at its first finding does not pay for the values after it)."""
    if _search is None or not values:
        return [(i, None) for i in range(len(values))]
    joined = _JOIN.join(values)
    if len(joined) <= longest and joined.isascii() and joined.count(_JOIN) == len(values) - 1:
        return _screened(_search, joined.lower().encode("ascii"), range(len(values)))
    index = [
        i
        for i, value in enumerate(values)
        if len(value) <= longest and value.isascii() and _JOIN not in value
    ]
    rest = [(i, None) for i in sorted(set(range(len(values))).difference(index))]
    if not index:
        return rest
    data = _JOIN.join(values[i] for i in index).lower().encode("ascii")
    return heapq.merge(rest, _screened(_search, data, index))


def _screened(
    search: Callable[[bytes, int], int], data: bytes, index: Sequence[int]
) -> Iterable[tuple[int, str | None]]:
    """The suspects among ASCII values joined in ``data`` (lower-cased), by their index
    in ``index``."""
    # the separators, and what is special in the values that are not plain
    left = data.translate(None, _PLAIN_OR_IRRELEVANT)
    runs: list[tuple[int, str | None]] = []
    if len(left) >= len(index):
        k = 0
        for separators, run in _RUN.findall(left.rstrip(b"\x01")):
            k += len(separators)
            specials = run.decode("ascii")
            runs.append((index[k], specials if _ALWAYS.isdisjoint(specials) else None))
    at = search(data, 0)
    if at == -1:
        return runs
    return _merged(runs, _hits(search, data, index, at))


def _hits(
    search: Callable[[bytes, int], int], data: bytes, index: Sequence[int], at: int
) -> Iterator[int]:
    """The index of each value the RE2 search finds something in, the first at ``at``:
    the next one is searched for (from the value after) only when asked for."""
    k = last = 0
    while at != -1:
        k += data.count(b"\x01", last, at)
        last = at
        yield index[k]
        end = data.find(b"\x01", at)
        at = -1 if end == -1 else search(data, end + 1)


def _merged(
    runs: list[tuple[int, str | None]], hits: Iterator[int]
) -> Iterator[tuple[int, str | None]]:
    """The runs and the hits in the order of the values (a hit: ``None``, the value
    whole)."""
    hit = next(hits, None)
    for i, specials in runs:
        while hit is not None and hit < i:
            yield hit, None
            hit = next(hits, None)
        if hit == i:
            yield i, None
            hit = next(hits, None)
        else:
            yield i, specials
    while hit is not None:
        yield hit, None
        hit = next(hits, None)
