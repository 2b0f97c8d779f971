"""Command injection and traversal, the fast mode's generic shapes of both (listed in
:mod:`trustmesh.gateway.waf`): ``_cmdi`` and ``_traversal`` take a lower-cased value and
its special characters, and name the first check that matches, or ``None``.

Each check runs only when the value holds a character it needs (``_ANY``, then per
check), the commands after an operator are looked up in a set (``_COMMAND_SET``), not
tried one by one by a regex alternation.
"""

from __future__ import annotations

import re

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
#: the letter before the parenthesis where _CODE_EXEC can match: system exec passthru popen
#: proc_open
_CODE_EXEC_BEFORE = "mcun"
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
