"""The XSS and SQL injection rules of the fast mode (:mod:`trustmesh.gateway._wafchecks`
runs them): keyword-anchored patterns, grouped by the characters they need.

- XSS: ``xss-script-tag``, ``xss-event-handler`` (any ``on*=`` in a tag),
  ``xss-active-tag`` (iframe, object, embed, svg, math, form…), ``xss-script-url``
  (``javascript:``/``vbscript:``/``data:text/html``), ``xss-attribute`` (``srcdoc=``,
  ``formaction=``, ``xlink:href=``, CSS ``expression(``), ``xss-js`` (a call of
  ``alert``/``confirm``/``prompt``/``eval``/``fromCharCode``, ``document.cookie``…),
  ``xss-utf7``;
- SQLi: ``sqli-union-select``, ``sqli-time-delay``, ``sqli-system-object`` (catalog
  tables, ``@@version``, ``load_file(``, ``into outfile``, ``xp_cmdshell``…),
  ``sqli-tautology`` (OR/AND then ``1=1``/``'a'='a``), ``sqli-quote-comment``,
  ``sqli-order-by-comment``, ``sqli-inline-comment``, ``sqli-stacked-query``,
  ``sqli-statement`` (DDL, INSERT…VALUES, SELECT * FROM, a sub-select).

Each rule is matched only where its keyword occurs and only when the value holds a
character it needs (``_NEEDS``, ``_ALSO_NEEDS``; ``_BEFORE``: the letter before a
keyword), so a value costs a few ``str.find``s per rule group instead of a regex search
per rule. Also here: what a browser decodes of a value (``_ENTITY``,
``_WHITESPACE_IN_SCHEME``). No pattern names a payload of an evaluation set; each is a
shape an attack of its kind must take.
"""

from __future__ import annotations

import re

#: what SQL injection needs to break out of a value or end a statement (libinjection-sqli
#: is trusted only on a value holding one, see _wafchecks)
_SQL_SIGNIFICANT = frozenset("'\"`;()#")  # or "--", "/*"
#: two numbers compared, or a word (quoted or not) compared with itself (_SQL_RULES)
_COMPARISON = (
    r"(?:\d+(?:\.\d+)?\s*\)*\s*(?:=|<>|!=|<=>|<=|>=|<|>)\s*\(*\s*['\"]?\d"
    r"|(['\"]?)(\w+)\1\s*\)*\s*(?:=|\blike\b)\s*\(*\s*['\"]?\2\b)"
)


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
