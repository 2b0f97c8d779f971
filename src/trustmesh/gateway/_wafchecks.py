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
is command injection. Every rule is matched where its keyword occurs and only when the
value holds a character it needs (see ``_NEEDS``, ``_ALSO_NEEDS``), so a value costs a
few ``str.find``s per rule group instead of a regex search per rule.

What a value may match is planned from its special characters (those not ``a``–``z``, a
digit or a space) and cached per set of them (:class:`_Plan`): the rules of the groups
whose needs it meets, and the gates of the other checks. Then the screen (see
``_SCREENS``): every rule of steps 2 and 3 and every check of step 4 matches only where
the value holds its keyword, or at a special character in a context the screen's
patterns find (a parenthesis after ``alert``, ``sleep``, ``system``…, an operator before
a command, a quote before a comment…); a value where they find none of these — most
benign text, even with quotes, parentheses, semicolons or URLs — goes to libinjection
and to what a browser decodes only. The screen is a superset of the checks it stands
for, so it changes no answer (``_unscreened``, the checks without it, answers the same:
``tests/gateway/test_waf_screen.py``), only what an answer costs.

libinjection is called through the C entry points of the ``libinjection`` extension
(``libinjection_sqli``, ``libinjection_xss``; they take a length, so a NUL byte does not
cut a value short) when they give the module's own answers in a self-test at import;
otherwise through the module's Python functions, the same C code behind a wrapper that
builds a token list on every call (≈ 2 µs a call instead of ≈ 0.3–1 µs).

No pattern here names a payload of an evaluation set; each is a shape an attack of its
kind must take (``benchmarks/waf.py`` measures them on attacks they were not written on).
"""

from __future__ import annotations

import ctypes
import html
import itertools
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

import libinjection  # type: ignore[import-not-found]  # a C extension without stubs

__all__ = ["check"]

#: Nothing in the checks below can match a value made only of these.
_INERT = re.compile(r"[A-Za-z0-9_]*")
_DIGITS = frozenset("0123456789")  # what an inert value that is no identifier starts with
#: letters, digits, spaces and the punctuation of names, addresses, dates and prose: an
#: attack made only of these needs one of the hints check() tests (a dot-dot, a ``.ini`` file, a
#: UNION, a script URL, a ``0x`` spelling, a ``--`` comment, UTF-7's ``<``)
_PLAIN = re.compile(r"[\w .,@!?+:-]*")
#: the characters the rule groups and gates look for (letters, digits and spaces never)
_SPECIAL = re.compile(r"[^a-z0-9 ]")
#: what SQL injection needs to break out of a value or end a statement (see _trusted_sqli)
_SQL_SIGNIFICANT = frozenset("'\"`;()#")  # or "--", "/*"
_SQLI_MIN_TOKENS = 4
#: two numbers compared, or a word (quoted or not) compared with itself (_SQL_RULES)
_COMPARISON = (
    r"(?:\d+(?:\.\d+)?\s*\)*\s*(?:=|<>|!=|<=>|<=|>=|<|>)\s*\(*\s*['\"]?\d"
    r"|(['\"]?)(\w+)\1\s*\)*\s*(?:=|\blike\b)\s*\(*\s*['\"]?\2\b)"
)

# -- traversal -----------------------------------------------------------------------
# a dot-dot step: two or more dots (or their 0x2e spelling) next to a separator, in
# either order, or a value that is only ".."
_DOT = r"(?:\.|0x2e)"
_SEP = r"(?:[/\\]|0x2f|0x5c)"
_DOTDOT = rf"{_DOT}{{2,}}{_SEP}|{_SEP}{_DOT}{{2,}}(?:{_SEP}|$)|^\.\.$"
# an absolute or dot-dot path to a well-known system file or directory
_SYSTEM_FILE = (
    r"(?<![\w.-])(?:etc[/\\](?:passwd|shadow|group|hosts|issue|sudoers|hostname|fstab|crontab)\b"
    r"|proc[/\\](?:self|\d+)[/\\]"
    r"|(?:boot|win|system)\.ini\b"
    r"|(?:windows|winnt)[/\\](?:system32|win\.ini|repair)"
    r"|[a-z]:[/\\](?:windows|winnt|inetpub|boot\.ini))"
)
# a local-file scheme or a PHP stream wrapper that reads files: see _file_scheme

# -- command injection ---------------------------------------------------------------
# common Unix and Windows commands an injection runs first (recon, fetch, shell, sleep)
_COMMANDS = (
    "id|whoami|uname|hostname|cat|ls|dir|echo|printf|ping|nc|ncat|netcat|socat|curl|wget"
    "|bash|sh|zsh|ksh|csh|dash|busybox|python[23]?|perl|php|ruby|node|lua|nslookup|dig"
    "|sleep|timeout|ifconfig|ipconfig|netstat|net|type|cmd|powershell|pwsh|rm|del|chmod"
    "|chown|cp|mv|touch|telnet|ssh|sudo|su|env|printenv|set|export|kill|ps|systeminfo"
    "|tasklist|find|grep|awk|sed|head|tail|more|xterm|nohup|crontab|base64|eval|exec"
    "|pwd|expr|reg|wmic|certutil|bitsadmin|ftp|tftp|xxd|mkfifo|openssl|getent|uname"
)
# what follows a command in a shell: nothing, another operator, an option, a path, a
# variable, a quote, a URL, or a number that ends the command
_SHELL_TAIL = r"(?:\s*$|\s*[;&|`)<>]|\s+(?:--?\w|[/\\$%'\"~]|\w+://|\d+\s*(?:$|[;&|`)<>])))"
# operators that run a next command: ; & | && || a backtick, a line break (``$(`` is
# cmdi-subshell); a character class first lets the regex engine skip ahead quickly
_RUN = r"[;&|`\n\r]{1,2}"
# the word after an operator, looked up in _COMMAND_SET (a regex alternation of a hundred
# words is tried word by word at each operator), then a shell tail after it. The word is
# the whole run of letters and digits (a tail cannot start with one), so matching the
# tail only after a command is what a look-ahead after the word would find
_WORD_AFTER_OPERATOR = rf"{_RUN}\s*['\"]?([a-z][a-z0-9]*)"
_COMMAND_SET = frozenset(_COMMANDS.replace("python[23]?", "python|python2|python3").split("|"))
_SUBSHELL = r"\$\(\s*[\w/.]|`\s*(?:/[a-z]|(?:" + _COMMANDS + r")\b)[^`]*`"
_VARIABLE_RUN = r"[;&|`]\s*\$\{?[A-Za-z_]\w*\}?\s*(?:$|[;&|`])"
_IFS = r"\$\{?ifs\b"
_BINARY_PATH = (
    r"(?:^|[\s;&|`(])(?:/usr)?(?:/local)?/s?bin/[a-z]"
    rf"|/s?bin/(?:{_COMMANDS})(?=$|[\s;&|`)'\"])"
)
_DEV_SOCKET = r"/dev/(?:tcp|udp)/"
_BRACE = r"\{\s*(?:" + _COMMANDS + r"),"


_RE_DOTDOT = re.compile(_DOTDOT)
_RE_SYSTEM_FILE = re.compile(_SYSTEM_FILE)
_RE_WORD_AFTER_OPERATOR = re.compile(_WORD_AFTER_OPERATOR)
_RE_SHELL_TAIL = re.compile(_SHELL_TAIL)
_SCHEMES = ("file", "php", "phar", "zip", "expect", "glob")
_RE_SUBSHELL = re.compile(_SUBSHELL)
_RE_VARIABLE = re.compile(f"{_VARIABLE_RUN}|{_IFS}")
_RE_BINARY_PATH = re.compile(_BINARY_PATH)


# a program run from code: a shell-out function called on a string or variable (PHP,
# Python, Java), a PHP open tag, a server-side include directive, Windows ``net`` admin
# (matched at each parenthesis, the function's name looked up behind it)
_CODE_EXEC = re.compile(
    r"(?:(?<=system)|(?<=exec)|(?<=passthru)|(?<=popen)|(?<=proc_open))\(\s*['\"$]"
    r"|(?:(?<=os\.system)|(?<=os\.popen)|(?<=getruntime\(\)\.exec))\("
)
_SSI = re.compile(r"<!--\s*#\s*(?:exec|include|echo|config|printenv)\b")
_NET_ADMIN = re.compile(r"[;&|`\n\r]\s*net\s+(?:user|localgroup|view|use|share)\b")

# -- traversal, IIS and overlong spellings --------------------------------------------
# IIS ``%u`` escapes, overlong UTF-8 and look-alike code points of ``.``, ``/`` and ``\``
# (a server or a library that folds them reads a dot-dot step)
_LOOKALIKES = (
    (("%u002e", "%uff0e", "\uff0e", "%c0%ae", "%e0%80%ae"), "."),
    (("%u002f", "%u2215", "%uff0f", "\u2215", "\uff0f", "%c0%af", "%e0%80%af"), "/"),
    (("%u005c", "%u2216", "%uff3c", "\u2216", "\uff3c", "%c1%9c"), "\\"),
)
# two dots, then an IIS escape of any character (an unknown spelling of a separator)
_DOTDOT_U_ESCAPE = re.compile(r"\.\.%u[0-9a-f]{4}")

# -- XSS and SQL injection: keyword-anchored rules ----------------------------------------
# Each rule is (check, keyword, pattern): the pattern is matched only where the keyword
# occurs (str.find), and starts there. A regex searched over a whole value tries every
# branch at every character (µs on prose); a find costs tens of ns. Rules are grouped by
# the characters one of which they need (_NEEDS: ``(`` for a call, ``'`` for a quote…):
# a group whose characters are all absent from the value is skipped with one set test.
Rule = tuple[str, str, "re.Pattern[str]"]
#: a rule as a plan holds it: with the characters one of which must come before its
#: keyword ("": any), see _BEFORE
Planned = tuple[str, str, "re.Pattern[str]", str]
Groups = tuple[tuple[frozenset[str], tuple[Rule, ...]], ...]

#: a keyword's rules need one of these characters in the value ("": none)
_NEEDS = {
    **dict.fromkeys(("<",), "<"),
    **dict.fromkeys(("script", "data"), ":"),
    **dict.fromkeys(("srcdoc", "formaction", "xlink:href", "innerhtml"), "="),
    **dict.fromkeys(("sleep", "("), "("),
    **dict.fromkeys(("document", "location", "mysql.user"), "."),
    **dict.fromkeys(("+adw-",), "+"),
    **dict.fromkeys(("`",), "`"),
    **dict.fromkeys(("expression",), "("),
    **dict.fromkeys(("waitfor", "'"), "'"),
    **dict.fromkeys(('"',), '"'),
    **dict.fromkeys(("_",), "_"),
    **dict.fromkeys(("@@",), "@"),
    **dict.fromkeys(("exec",), "._"),
    **dict.fromkeys(("or", "and", "xor", "having", "where"), "=<>"),
    **dict.fromkeys(("||",), "|"),
    **dict.fromkeys(("&&",), "&"),
    **dict.fromkeys(("order", "group"), "-#*"),
    **dict.fromkeys(("/*",), "*"),
    **dict.fromkeys((";",), ";"),
}


#: a rule that also needs one of these characters, besides its keyword's (each read off
#: its pattern: every string it matches holds one); checked when a value's plan is made
_ALSO_NEEDS = {
    ("xss-event-handler", "<"): "=",
    ("xss-script-url", "data"): "/",
    ("sqli-time-delay", "sleep"): ")",
    ("sqli-quote-comment", "'"): "-#*",
    ("sqli-quote-comment", '"'): "-#*",
    ("sqli-statement", "select"): "*_(@",
}


#: a rule whose every branch starts with a look-behind (a function's or an object's name
#: before its keyword): the character before the keyword is one of these (the names'
#: last letters), tested before the pattern is
_BEFORE = {
    ("xss-js", "("): "tmle",  # alert confirm prompt eval fromcharcode
    ("xss-js", "`"): "tml",  # alert confirm prompt eval
    ("sqli-time-delay", "("): "pke",  # sleep benchmark dbms_pipe.receive_message
    ("sqli-system-object", "_"): "ngepld",  # information pg sqlite xp sp utl load
}
#: the same for cmdi-code-exec at a parenthesis: system exec passthru popen proc_open
_CODE_EXEC_BEFORE = "mcun"


def _rules(*rules: tuple[str, str, str]) -> Groups:
    """The rules, in order, grouped by what they need (first-match order kept within a
    group; groups in the order of their first rule)."""
    groups: dict[str, list[Rule]] = {}
    for check, keyword, pattern in rules:
        groups.setdefault(_NEEDS.get(keyword, ""), []).append((check, keyword, re.compile(pattern)))
    return tuple((frozenset(needs), tuple(group)) for needs, group in groups.items())


_XSS_RULES = _rules(
    ("xss-script-tag", "<", r"<\s*/?\s*script\b"),
    # any on*= handler inside a tag, whatever the event's name (browsers add new ones)
    ("xss-event-handler", "<", r"<[a-z][^>]*?[^a-z0-9_-]on[a-z]{3,}\s*="),
    # tags that load or run active content, or submit elsewhere
    (
        "xss-active-tag",
        "<",
        r"<\s*(?:iframe|frame|frameset|object|embed|applet|meta|base|svg|math|layer|ilayer"
        r"|xml|import|isindex|form)\b",
    ),
    # a URL scheme that runs script (not followed by a space: "JavaScript: the good parts")
    ("xss-script-url", "script", r"script\s*:(?!\s)"),
    (
        "xss-script-url",
        "data",
        r"\bdata\s*:\s*(?:text/html|image/svg|application/(?:x-)?(?:java|ecma)script)",
    ),
    ("xss-attribute", "srcdoc", r"srcdoc\s*="),
    ("xss-attribute", "formaction", r"formaction\s*="),
    ("xss-attribute", "xlink:href", r"xlink:href\s*="),
    # a CSS expression() in a style value
    ("xss-attribute", "expression", r"(?:(?<=[:=(])|(?<=[:=(]\s))expression\s*\("),
    # a call of a dialog or eval sink (JavaScript) or of a decoder, matched at the
    # parenthesis or backtick with the name looked up behind it ("prompt(s)" is prose)
    (
        "xss-js",
        "(",
        r"(?:(?<=alert)|(?<=confirm)|(?<=prompt)|(?<=eval)|(?<=fromcharcode))\((?!e?s\)|ed\))",
    ),
    ("xss-js", "`", r"(?:(?<=alert)|(?<=confirm)|(?<=prompt)|(?<=eval))`"),
    ("xss-js", "document", r"document\s*\.\s*(?:cookie|domain|write)"),
    ("xss-js", "location", r"location\s*\.\s*(?:hash|href\s*=)"),
    ("xss-js", "innerhtml", r"innerhtml\s*="),
    ("xss-utf7", "+adw-", r"\+adw-"),  # UTF-7's "<"
)
#: the scheme names that run script, checked before ``script:`` (xss-script-url)
_SCRIPT_SCHEMES = ("java", "vb", "live", "mocha")
#: what a browser drops inside a URL scheme (``jav&#x09;ascript:``)
_WHITESPACE_IN_SCHEME = re.compile(r"[\t\n\r\x00]")
_DECODED_BY_BROWSER = frozenset("&\t\n\r\x00")
#: a character reference (``&#40;``, ``&lt;``, ``&lt`` — HTML5 reads a few without ``;``)
_ENTITY = re.compile(r"&(?:#|[a-z]+;|lt|gt|quot|amp|apos)")

_SQL_RULES = _rules(
    # UNION [ALL|DISTINCT] SELECT, also with comments or parentheses for spaces
    (
        "sqli-union-select",
        "union",
        r"\bunion\b(?:\s|/\*.*?\*/|\()*(?:all|distinct)?(?:\s|/\*.*?\*/|\()*select\b",
    ),
    # a time delay: sleep(), pg_sleep(), benchmark(n, …), WAITFOR DELAY '…', dbms_lock
    # (matched at the parenthesis, the function's name looked up behind it)
    (
        "sqli-time-delay",
        "(",
        r"(?<=sleep)\(|(?<=benchmark)\(\s*\d+\s*,"
        r"|(?:(?<=dbms_lock\.sleep)|(?<=dbms_pipe\.receive_message))\(",
    ),
    ("sqli-time-delay", "sleep", r"sleep\s+\(\s*\d+\s*\)"),
    ("sqli-time-delay", "waitfor", r"\bwaitfor\s+(?:delay|time)\s*'"),
    # the catalog, system variables and file functions an attack enumerates or calls
    (
        "sqli-system-object",
        "sys",
        r"sys(?:objects|columns|users|databases|logins)\b|sys(?:ibm|cat)\.",
    ),
    ("sqli-system-object", "mysql.user", r"mysql\.user\b"),
    # names with an underscore, matched at it: information_schema, pg_catalog, xp_cmdshell…
    (
        "sqli-system-object",
        "_",
        r"(?<=\binformation)_schema|(?<=\bpg)_(?:catalog|shadow|user|tables)\b"
        r"|(?<=\bsqlite)_master|(?<=\bxp)_(?:cmdshell|regread|dirtree|servicecontrol|fileexist)\b"
        r"|(?<=\bsp)_(?:executesql|oacreate|makewebtask|addlogin|password|configure)\b"
        r"|(?<=\butl)_(?:http|inaddr)\.|(?<=\bload)_file\s*\(",
    ),
    ("sqli-system-object", "@@", r"@@(?:version|hostname|datadir|servername|basedir|user)\b"),
    ("sqli-system-object", "into", r"\binto\s+(?:out|dump)file\b"),
    # a boolean test: OR/AND/XOR/HAVING/WHERE/||/&& then a comparison of two numbers or of
    # a word (quoted or not) with itself (1=1, 'a'='a, x like x)
    *(
        ("sqli-tautology", keyword, rf"{after}\s*\(*\s*{_COMPARISON}")
        for keyword, after in (
            ("or", r"\bor(?=[\s(])"),
            ("and", r"\band(?=[\s(])"),
            ("xor", r"\bxor(?=[\s(])"),
            ("having", r"\bhaving(?=[\s(])"),
            ("where", r"\bwhere(?=[\s(])"),
            ("||", r"\|\|"),
            ("&&", "&&"),
        )
    ),
    # a quote closed, then a comment that cuts off the rest of the query
    ("sqli-quote-comment", "'", r"'\s*\)*\s*;?\s*(?:(?:--|#)[\s+-]*$|/\*)"),
    ("sqli-quote-comment", '"', r"\"\s*\)*\s*;?\s*(?:(?:--|#)[\s+-]*$|/\*)"),
    # ORDER/GROUP BY column numbers, then a comment: counting a query's columns
    ("sqli-order-by-comment", "order", r"\border\s+by\s+\d+(?:\s*,\s*\d+)*[\s,]*(?:--|#|/\*)"),
    ("sqli-order-by-comment", "group", r"\bgroup\s+by\s+\d+(?:\s*,\s*\d+)*[\s,]*(?:--|#|/\*)"),
    # a keyword cut by an inline comment (uni/**/on), or MySQL's executed comment
    ("sqli-inline-comment", "/*", r"/\*[^*]*\*/[a-z]|/\*!\d*\s*[a-z]"),
    # a second statement after a semicolon (stacked query)
    (
        "sqli-stacked-query",
        ";",
        r";\s*(?:select\s+(?:\*|@@|[\w.]+\s*(?:\(|,)|[\w.]+\s+from\s+[\w.]+\s*(?:$|;|--|#|where\b))"
        r"|insert\s+into\b|update\s+[\w.]+\s+set\b|delete\s+from\b"
        r"|drop\s+(?:table|database|user|view)\b|create\s+(?:table|user|database)\b"
        r"|alter\s+(?:table|user)\b|truncate\s+table\b"
        r"|exec(?:ute)?\s*(?:\(|master\b|xp_|sp_|@|immediate\b)|declare\s+@|shutdown\b|waitfor\b)",
    ),
    # a statement's shape anywhere: DDL with a column list, INSERT … VALUES/SELECT,
    # SELECT * FROM, a SELECT of the session's user or version, a sub-select of a function
    (
        "sqli-statement",
        "create",
        r"\bcreate\s+(?:table\s+[\w.]+\s*\(|user\s+\S+\s+identified\s+by\b)",
    ),
    (
        "sqli-statement",
        "insert",
        r"\binsert\s+into\s+[\w.`\"]+\s*(?:\([^)]*\)\s*)?(?:values|select)\b",
    ),
    (
        "sqli-statement",
        "select",
        r"\bselect\s+(?:\*\s*from\b|(?:current_user|session_user|system_user|user\(\)"
        r"|version\(\)|database\(\)|@@))",
    ),
    ("sqli-statement", "(", r"\(\s*select\s*(?:\(|\*|@@|[\w.]+\s*\()"),
    ("sqli-statement", "exec", r"\bexec(?:ute)?\s+(?:master\.|xp_|sp_)"),
)

#: the shell's operators that run a next command (cmdi-shell-metachar)
_OPERATORS = frozenset(";&|`\n\r")
#: every command-injection and traversal check needs one of these (or ``0x2e``)
_ANY = frozenset("./\\\x00;&|`$\n\r{(<%\uff0e")  # or "0x2e"


def _scheme_char(c: str) -> bool:
    return c.isalnum() or c in "_.+-"


def _file_scheme(v: str) -> bool:
    """Whether ``v`` holds ``file://`` or a PHP stream wrapper (``php://`` …) that is not
    the tail of a longer scheme."""
    at = v.find("://")
    while at != -1:
        for scheme in _SCHEMES:
            start = at - len(scheme)
            if (start == 0 or (start > 0 and not _scheme_char(v[start - 1]))) and v.startswith(
                scheme, start
            ):
                return True
        at = v.find("://", at + 3)
    return False


def _command_after_operator(v: str, operators: frozenset[str]) -> bool:
    """Whether an operator in ``v`` (one of ``operators``, those it holds) is followed by
    a common command and a shell tail (each operator found with str.find, the regex
    matched only there)."""
    for operator in operators:
        at = v.find(operator)
        while at != -1:
            match = _RE_WORD_AFTER_OPERATOR.match(v, at)
            if (
                match is not None
                and match[1] in _COMMAND_SET
                and _RE_SHELL_TAIL.match(v, match.end()) is not None
            ):
                return True
            at = v.find(operator, at + 1)
    return False


def _traversal(v: str, chars: frozenset[str]) -> str | None:
    """The traversal check that matches ``v`` (lower-cased; its characters ``chars``)."""
    if (".." in v or "0x2e" in v) and _RE_DOTDOT.search(v):
        return "traversal-dotdot"
    if ("%" in chars or "\uff0e" in chars) and (
        _DOTDOT_U_ESCAPE.search(v) or _RE_DOTDOT.search(_fold_lookalikes(v))
    ):
        return "traversal-dotdot-unicode"
    if (
        ("/" in chars or "\\" in chars or ".ini" in v)
        and ("etc" in v or "proc" in v or ".ini" in v or "win" in v or "inetpub" in v)
        and _RE_SYSTEM_FILE.search(v)
    ):
        return "traversal-system-file"
    if "/" in chars and "://" in v and _file_scheme(v):
        return "traversal-file-scheme"
    if "\x00" in chars:
        return "traversal-nul"
    return None


def _fold_lookalikes(v: str) -> str:
    for spellings, ascii_char in _LOOKALIKES:
        for spelling in spellings:
            v = v.replace(spelling, ascii_char)
    return v


def _at_each(v: str, keyword: str, pattern: re.Pattern[str], before: str) -> bool:
    """Whether ``pattern`` matches where ``keyword`` occurs in ``v`` after one of the
    characters ``before``."""
    at = v.find(keyword)
    while at != -1:
        if at and v[at - 1] in before and pattern.match(v, at) is not None:
            return True
        at = v.find(keyword, at + 1)
    return False


def _cmdi(v: str, chars: frozenset[str]) -> str | None:
    """The command-injection check that matches ``v`` (lower-cased; its characters
    ``chars``)."""
    operators = _OPERATORS & chars
    if operators and _command_after_operator(v, operators):
        return "cmdi-shell-metachar"
    if ("$" in chars or "`" in chars) and _RE_SUBSHELL.search(v):
        return "cmdi-subshell"
    if "$" in chars and _RE_VARIABLE.search(v):
        return "cmdi-ifs" if "ifs" in v else "cmdi-variable"
    if "/" in chars:
        if "bin/" in v and _RE_BINARY_PATH.search(v):
            return "cmdi-binary-path"
        if "/dev/" in v and re.search(_DEV_SOCKET, v):
            return "cmdi-dev-socket"
    if "{" in chars and re.search(_BRACE, v):
        return "cmdi-brace-expansion"
    if ("(" in chars and _at_each(v, "(", _CODE_EXEC, _CODE_EXEC_BEFORE)) or (
        "<" in chars and "<?php" in v
    ):
        return "cmdi-code-exec"
    if "<" in chars and "<!--" in v and _SSI.search(v):
        return "cmdi-ssi"
    if operators and "net " in v and _NET_ADMIN.search(v):
        return "cmdi-net-admin"
    return None


def _script_scheme(v: str, at: int) -> bool:
    """Whether ``script`` at ``at`` ends a scheme that runs script (``javascript:``…)."""
    if v.startswith("data", at):
        return True
    head = v[:at].rstrip()
    return any(
        head.endswith(name) and (len(head) == len(name) or not head[-len(name) - 1].isalnum())
        for name in _SCRIPT_SCHEMES
    )


# -- libinjection --------------------------------------------------------------------
def _python_sqli(data: bytes) -> str | None:
    found = libinjection.is_sql_injection(data.decode("utf-8", "surrogatepass"))
    return str(found["fingerprint"]) if found["is_sqli"] else None


def _python_xss(data: bytes) -> bool:
    return bool(libinjection.is_xss(data.decode("utf-8", "surrogatepass"))["is_xss"])


def _c_entry_points() -> tuple[Callable[[bytes], str | None], Callable[[bytes], bool]] | None:
    """libinjection's own C functions, if the extension exports them and they answer
    a self-test; ``None`` otherwise."""
    try:
        lib = ctypes.PyDLL(libinjection.__file__)
        c_sqli = lib.libinjection_sqli
        c_xss = lib.libinjection_xss
    except (OSError, AttributeError, TypeError):
        return None
    # no argtypes: ctypes passes bytes and a string buffer as char *, and the length as
    # the size_t it is given (converting each argument through argtypes costs ≈ 0.1 µs)
    c_sqli.restype = ctypes.c_int
    c_xss.restype = ctypes.c_int
    size_t = ctypes.c_size_t

    # PyDLL keeps the GIL during the call, so one fingerprint buffer serves every thread
    fingerprint = ctypes.create_string_buffer(8)

    def sqli(data: bytes) -> str | None:
        if not c_sqli(data, size_t(len(data)), fingerprint):
            return None
        return fingerprint.value.decode("ascii", "replace")

    def xss(data: bytes) -> bool:
        return bool(c_xss(data, size_t(len(data))))

    probes = [b"1' or '1'='1", b"1 union select a from b", b"O'Brien", b"select your size"]
    probes += [b"<img src=x onerror=alert(1)>", b"a=b", b"x\x00' or 1=1--"]
    for probe in probes:
        if sqli(probe) != _python_sqli(probe) or xss(probe) != _python_xss(probe):
            return None
    return sqli, xss


_sqli_c, _xss_c = _c_entry_points() or (_python_sqli, _python_xss)


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
        shell=not _ANY.isdisjoint(chars),
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
