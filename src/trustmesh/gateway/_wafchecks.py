"""The checks behind :mod:`trustmesh.gateway.waf`: one decoded value in, the first check
that matches out (its category name and its check name), or ``None``.

In this order, cheapest and most specific first:

1. a value made only of ASCII letters, digits and ``_`` (most keys, ids, enum values)
   matches nothing and costs one regex; no check below can match it (libinjection
   flags no single word: checked against every word of the shared attack sets);
2. traversal and command injection: one compiled regex of generic shapes (below);
3. libinjection XSS, only when the value holds ``<`` or ``=``: its HTML5 tokenizer needs
   a tag (``<``) or an attribute value (``=``) to flag anything;
4. libinjection SQLi.

libinjection is called through the C entry points of the ``libinjection`` extension
(``libinjection_sqli``, ``libinjection_xss``; they take a length, so a NUL byte does not
cut a value short) when they give the module's own answers in a self-test at import;
otherwise through the module's Python functions, the same C code behind a wrapper that
builds a token list on every call (≈ 2 µs a call instead of ≈ 0.8 µs).

No pattern here names a payload of an evaluation set; each is a shape an attack of its
kind must take (``benchmarks/waf.py`` measures them on attacks they were not written on).
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable

import libinjection  # type: ignore[import-not-found]  # a C extension without stubs

__all__ = ["check"]

#: Nothing in the checks below can match a value made only of these.
_INERT = re.compile(r"[A-Za-z0-9_]*")

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
# the word after an operator, then a shell tail; the word is looked up in _COMMAND_SET
# (a regex alternation of a hundred words is tried word by word at each operator)
_WORD_AFTER_OPERATOR = rf"{_RUN}\s*['\"]?([a-z][a-z0-9]*)(?={_SHELL_TAIL})"
_COMMAND_SET = frozenset(_COMMANDS.replace("python[23]?", "python|python2|python3").split("|"))
_SUBSHELL = r"\$\(\s*[\w/.]|`\s*(?:/|(?:" + _COMMANDS + r")\b)[^`]*`"
_VARIABLE_RUN = r"[;&|`]\s*\$\{?[A-Za-z_]\w*\}?\s*(?:$|[;&|`])"
_IFS = r"\$\{?ifs\b"
_BINARY_PATH = r"(?:^|[\s;&|`(])(?:/usr)?(?:/local)?/s?bin/[a-z]"
_DEV_SOCKET = r"/dev/(?:tcp|udp)/"
_BRACE = r"\{\s*(?:" + _COMMANDS + r"),"


_RE_DOTDOT = re.compile(_DOTDOT)
_RE_SYSTEM_FILE = re.compile(_SYSTEM_FILE)
_RE_WORD_AFTER_OPERATOR = re.compile(_WORD_AFTER_OPERATOR)
_SCHEMES = ("file", "php", "phar", "zip", "expect", "glob")
_RE_SUBSHELL = re.compile(_SUBSHELL)
_RE_VARIABLE = re.compile(f"{_VARIABLE_RUN}|{_IFS}")
_RE_BINARY_PATH = re.compile(_BINARY_PATH)


#: every pattern needs one of these (a system file, a separator or ``.ini``; a scheme,
#: ``:``… after a letter and ``/``): one scan spares the rest on most values
_RE_ANY = re.compile(r"[./\\\x00;&|`$\n\r{]|0x2e")


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


def _command_after_operator(v: str) -> bool:
    """Whether an operator in ``v`` is followed by a common command and a shell tail
    (each operator found with str.find, the regex matched only there)."""
    for operator in ";&|`\n\r":
        at = v.find(operator)
        while at != -1:
            match = _RE_WORD_AFTER_OPERATOR.match(v, at)
            if match is not None and match[1] in _COMMAND_SET:
                return True
            at = v.find(operator, at + 1)
    return False


def _pattern(v: str) -> tuple[str, str] | None:
    """The first generic pattern in ``v`` (lower-cased). Each regex runs only when the
    value holds a substring the regex needs (an ``in`` test costs tens of ns; a regex
    search over a value, a few µs)."""
    if _RE_ANY.search(v) is None:
        return None
    if (".." in v or "0x2e" in v) and _RE_DOTDOT.search(v):
        return "traversal", "traversal-dotdot"
    if (
        "etc" in v or "proc" in v or ".ini" in v or "windows" in v or "winnt" in v or "inetpub" in v
    ) and _RE_SYSTEM_FILE.search(v):
        return "traversal", "traversal-system-file"
    if "://" in v and _file_scheme(v):
        return "traversal", "traversal-file-scheme"
    if "\x00" in v:
        return "traversal", "traversal-nul"
    if _command_after_operator(v):
        return "cmdi", "cmdi-shell-metachar"
    if ("$(" in v or "`" in v) and _RE_SUBSHELL.search(v):
        return "cmdi", "cmdi-subshell"
    if "$" in v and _RE_VARIABLE.search(v):
        return "cmdi", "cmdi-ifs" if "ifs" in v else "cmdi-variable"
    if "bin/" in v and _RE_BINARY_PATH.search(v):
        return "cmdi", "cmdi-binary-path"
    if "/dev/" in v and re.search(_DEV_SOCKET, v):
        return "cmdi", "cmdi-dev-socket"
    if "{" in v and re.search(_BRACE, v):
        return "cmdi", "cmdi-brace-expansion"
    return None


# -- libinjection --------------------------------------------------------------------
def _python_sqli(data: bytes) -> bool:
    return bool(libinjection.is_sql_injection(data.decode("utf-8", "surrogatepass"))["is_sqli"])


def _python_xss(data: bytes) -> bool:
    return bool(libinjection.is_xss(data.decode("utf-8", "surrogatepass"))["is_xss"])


def _c_entry_points() -> tuple[Callable[[bytes], bool], Callable[[bytes], bool]] | None:
    """libinjection's own C functions, if the extension exports them and they answer
    a self-test; ``None`` otherwise."""
    try:
        lib = ctypes.PyDLL(libinjection.__file__)
        c_sqli = lib.libinjection_sqli
        c_xss = lib.libinjection_xss
    except (OSError, AttributeError, TypeError):
        return None
    c_sqli.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    c_sqli.restype = ctypes.c_int
    c_xss.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    c_xss.restype = ctypes.c_int

    # PyDLL keeps the GIL during the call, so one fingerprint buffer serves every thread
    fingerprint = ctypes.create_string_buffer(8)

    def sqli(data: bytes) -> bool:
        return bool(c_sqli(data, len(data), fingerprint))

    def xss(data: bytes) -> bool:
        return bool(c_xss(data, len(data)))

    probes = [b"1' or '1'='1", b"1 union select a from b", b"O'Brien", b"select your size"]
    probes += [b"<img src=x onerror=alert(1)>", b"a=b", b"x\x00' or 1=1--"]
    for probe in probes:
        if sqli(probe) != _python_sqli(probe) or xss(probe) != _python_xss(probe):
            return None
    return sqli, xss


_sqli, _xss = _c_entry_points() or (_python_sqli, _python_xss)


def check(value: str) -> tuple[str, str] | None:
    """The category and check name of the first check that matches ``value``."""
    if _INERT.fullmatch(value):
        return None
    if (found := _pattern(value.lower())) is not None:
        return found
    data = value.encode("utf-8", "surrogatepass")
    if ("<" in value or "=" in value) and _xss(data):
        return "xss", "libinjection-xss"
    if _sqli(data):
        return "sqli", "libinjection-sqli"
    return None
