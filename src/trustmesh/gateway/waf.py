"""The injection filter's fast mode: a request's inputs, decoded as the service will read
them, checked for SQL injection, XSS, path traversal and command injection.

Pure logic (no sockets, no ASGI): the gateway hands :meth:`FastFilter.inspect` what it
already has, and gets back the first :class:`Finding` (its category, where, which check)
or ``None``. A finding never holds the offending value.

What is inspected, and how it is decoded (exactly as the service reads it):

- ``path``: each segment of the canonical path (:func:`trustmesh.policy.paths.canonical_path`
  has already decoded it once and refused dot segments, ``%2F``, ``%25``, ``%00``, ``\\``);
- the query: names and values, split and URL-decoded once (``+`` is a space) as
  ``urllib.parse.parse_qsl(keep_blank_values=True)`` does over the latin-1 bytes
  (what Starlette does);
- headers: only those listed (``DEFAULT_HEADERS``: ``User-Agent``, ``Referer``,
  ``Cookie``, split into its cookies, names and values, and every ``X-*`` header; an
  entry ending in ``*`` is a prefix); ``Authorization`` and ``Proxy-Authorization``
  never (a credential is no place to look, nor to leave in a log): listing them is
  refused with ValueError;
- the body, by content type: ``application/x-www-form-urlencoded`` as form fields
  (names and values, like the query, UTF-8); JSON (``application/json``, ``*+json``)
  as its keys and string values — the ``(pointer, string)`` pairs the gateway already
  parsed, or, when it passes none, the body read here (:mod:`trustmesh.gateway._wafjson`:
  what :func:`json.loads` reads, every member of an object kept: a key given twice is
  inspected twice, as a service may read either, and the one a last-wins parser drops
  must not pass unread; most bodies are read fast, without the places of their strings,
  and read again with them only when something is found); a JSON body that json.loads
  does not parse is inspected whole, as one value; every other content type (multipart,
  XML, binary) is not inspected.

Decoding once is what the service does; a value that still holds a percent-escape after
it is decoded again (``unquote_plus``, at most three more times), and each further
layer is checked too: an attack that shows there is refused with check
``double-encoding`` and that attack's category. A layer that shows nothing passes, so
a literal ``%20`` or a nested URL (``next=https://a/cb?r=%2Fhome``) is not refused for
holding escapes.

The checks (:mod:`trustmesh.gateway._wafchecks`, where each is listed), first match
wins, in this order: XSS (generic shapes, then ``libinjection-xss``, on the value and on
what a browser reads of it), SQLi (generic shapes: UNION SELECT, time delays, system
objects, tautologies, a quote then a comment, stacked queries, statements), command
injection, traversal, and last ``libinjection-sqli`` (trusted only with a fingerprint of
4 tokens or more and a quote, ``;``, a parenthesis or a comment in the value: the short
fingerprints are what prose with quotes makes):

- ``cmdi``: ``cmdi-shell-metachar`` (``;`` ``&`` ``|`` ``&&`` ``||`` a backtick, ``$(``
  or a line break, then a common command followed by what a shell command has: an
  option, a path, a variable, a quote, a URL, or the end), ``cmdi-subshell`` (``$(…``,
  a backtick pair around a command or a path), ``cmdi-variable`` (``;$CMD``),
  ``cmdi-ifs`` (``${IFS}``), ``cmdi-binary-path`` (``/bin/…``, ``/usr/sbin/…``),
  ``cmdi-dev-socket`` (``/dev/tcp/``), ``cmdi-brace-expansion`` (``{cat,…``),
  ``cmdi-code-exec`` (``system("…")``, ``passthru($…``, ``os.system(``, ``<?php``),
  ``cmdi-ssi`` (``<!--#exec``), ``cmdi-net-admin`` (``& net user …``);
- ``traversal``: ``traversal-dotdot`` (``../``, ``..\\``, ``/..`` at the end, their
  ``0x2e``/``0x5c`` spellings), ``traversal-dotdot-unicode`` (IIS ``%u`` escapes,
  overlong UTF-8 and look-alike dots and slashes), ``traversal-system-file``
  (``etc/passwd``, ``proc/self/``, ``win.ini``, ``C:\\Windows``, …),
  ``traversal-file-scheme`` (``file://``, ``php://``, …), ``traversal-nul`` (a NUL byte).

Bounds: a value is checked in windows of ``WINDOW`` (4,096) characters that overlap by
``OVERLAP`` (512), so a long value costs linear time and nothing in it is skipped; the
total is bounded by what the request may carry (the gateway's body limit, stage 6, runs
first; ≈ 10 µs per KiB of prose, ``benchmarks/waf.py``). A request's values (path
segments, query and form fields, headers, JSON keys and strings) are screened together
first (:mod:`trustmesh.gateway._wafbody`: one ``bytes.translate`` and one RE2 search over
all of them); only those it cannot rule out are checked one by one, and those in which
it found no word or context of a rule by libinjection and what a browser decodes only.
It decides what a request costs, never what is found in it
(``tests/gateway/test_waf_body.py``).

Locations: ``path``, ``query.<name>``, ``form.<name>``, ``header.<name>``,
``header.cookie.<name>``, ``body<JSON pointer>`` (``body/items/0/name``). A name is cut
to 64 characters, anything but printable ASCII in it becomes ``?``, and a name that is
itself the offending string is left out (``query``, ``form``, ``header.cookie``, or the
pointer of the object whose key it is).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from urllib.parse import parse_qsl, unquote_plus

from trustmesh.gateway._wafbody import suspects
from trustmesh.gateway._wafchecks import check, check_rest
from trustmesh.gateway._wafjson import fast_strings, located

__all__ = ["DEFAULT_HEADERS", "OVERLAP", "WINDOW", "Category", "FastFilter", "Finding"]

DEFAULT_HEADERS: tuple[str, ...] = ("user-agent", "referer", "cookie", "x-*")
WINDOW = 4096
OVERLAP = 512
_NAME_MAX = 64
_MORE_DECODINGS = 3
_NEVER = frozenset({"authorization", "proxy-authorization"})
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
#: the parts of a request's values: where each starts among them, and how it names the
#: place of its i-th value
_Parts = list[tuple[int, Callable[[int], str]]]


class Category(enum.StrEnum):
    """What kind of attack a finding is (the event's category): fast mode finds the
    first four; crs mode (:mod:`trustmesh.gateway.crs`) the CRS's other kinds too."""

    SQLI = "sqli"
    XSS = "xss"
    TRAVERSAL = "traversal"
    CMDI = "cmdi"
    RFI = "rfi"
    PHP = "php"
    JAVA = "java"
    NODEJS = "nodejs"
    FIXATION = "session-fixation"
    PROTOCOL = "protocol"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class Finding:
    """The first attack found: its category, where it was (never the value) and which
    check matched (``libinjection-sqli``, ``traversal-dotdot``, ``double-encoding``…)."""

    category: Category
    location: str
    check: str


class FastFilter:
    """The fast mode's inspection of one request; build once per route (the header
    list is compiled here), call :meth:`inspect` per request."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, *, inspect_headers: Sequence[str] = DEFAULT_HEADERS) -> None:
        names = [name.strip().lower() for name in inspect_headers]
        if forbidden := sorted(_NEVER.intersection(n.rstrip("*") for n in names)):
            raise ValueError(f"the filter never inspects {', '.join(forbidden)}")
        self._exact = frozenset(n for n in names if not n.endswith("*"))
        self._prefixes = tuple(n[:-1] for n in names if n.endswith("*"))

    def inspect(
        self,
        *,
        path: str,
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        content_type: str | None,
        body: bytes,
        json_strings: Iterable[tuple[str, str]] | None = None,
    ) -> Finding | None:
        """The first finding in the request's path, query, headers and body, in that
        order, or ``None`` (see the module docstring for what each part is)."""
        # every value of the request, in that order, screened together (_first); each
        # part names where its values are, from its first one on
        values = path.split("/")
        parts: _Parts = [(0, _path_place)]
        if query:
            _add_pairs(values, parts, _qsl(query.decode("latin-1")), "query")
        self._add_headers(values, parts, headers)
        if body or json_strings is not None:
            media = (content_type or "").split(";", 1)[0].strip().lower()
            if media == "application/x-www-form-urlencoded":
                _add_pairs(values, parts, _qsl(body.decode("utf-8", "replace")), "form")
            elif media == "application/json" or media.endswith("+json"):
                if json_strings is None:
                    _add_json_body(values, parts, body)
                else:
                    _add_pointers(values, parts, json_strings)
        if (found := _first(values)) is None:
            return None
        i, (category, check_name) = found
        first, where = next(part for part in reversed(parts) if part[0] <= i)
        if where is _unplaced:
            # in a JSON body read without places (the last part): read again with them,
            # its first finding in the order it has always had (the same strings, so a
            # finding; "body" only if the two readers ever disagreed)
            return _in_json_body(body) or Finding(category, "body", check_name)
        return Finding(category, where(i - first), check_name)

    def _add_headers(
        self,
        values: list[str],
        parts: _Parts,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        #: where each value is: a header's name, or a cookie's (``None``: it is the name)
        places: list[tuple[str, str | None]] = []
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if name in _NEVER or not (name in self._exact or name.startswith(self._prefixes)):
                continue
            value = raw_value.decode("latin-1")
            if name == "cookie":
                for part in value.split(";"):
                    cookie, _, text = part.partition("=")
                    cookie = cookie.strip()
                    values += (cookie, text.strip())
                    places += (("header.cookie", None), ("header.cookie", cookie))
            else:
                values.append(value)
                places.append(("header", name))
        if places:
            parts.append((len(values) - len(places), lambda i: _place(*places[i])))


def _path_place(_: int) -> str:
    return "path"


def _place(where: str, name: str | None) -> str:
    return where if name is None else f"{where}.{_name(name)}"


def _qsl(text: str) -> list[tuple[str, str]]:
    return parse_qsl(text, keep_blank_values=True)


def _add_pairs(
    values: list[str],
    parts: _Parts,
    pairs: Sequence[tuple[str, str]],
    where: str,
) -> None:
    """Names and values (a name that offends is left out of the location)."""
    parts.append((len(values), lambda i: _place(where, None if i % 2 == 0 else pairs[i // 2][0])))
    values += (text for pair in pairs for text in pair)


def _add_pointers(
    values: list[str],
    parts: _Parts,
    strings: Iterable[tuple[str, str]],
) -> None:
    pairs = strings if isinstance(strings, Sequence) else list(strings)
    parts.append((len(values), lambda i: f"body{_pointer(_without_key(*pairs[i]))}"))
    values += map(itemgetter(1), pairs)


def _first(values: Sequence[str]) -> tuple[int, tuple[Category, str]] | None:
    """The first of ``values`` (its index) in which :func:`_value` finds an attack, and
    what it finds: only the suspects of the screen of many values
    (:func:`~trustmesh.gateway._wafbody.suspects`) are looked at, and those in which it
    found nothing by libinjection and what a browser decodes only."""
    for i, specials in suspects(values, WINDOW):
        value = values[i]
        if specials is None:
            if (found := _value(value)) is not None:
                return i, found
        elif (hit := check_rest(value, specials)) is not None:
            return i, (Category(hit[0]), hit[1])
    return None


def _without_key(pointer: str, key: str) -> str:
    """The pointer of the object holding ``key`` when ``pointer`` ends with it (escaped
    as RFC 6901 §4 says, or not), so that an offending key is not named."""
    for token in (key.replace("~", "~0").replace("/", "~1"), key):
        if pointer.endswith("/" + token):
            return pointer[: -len(token) - 1]
    return pointer


def _add_json_body(values: list[str], parts: _Parts, body: bytes) -> None:
    """A JSON body's keys and string values: read fast, without their places, when
    :func:`~trustmesh.gateway._wafjson.fast_strings` can (most bodies); by json.loads with
    them otherwise."""
    if (fast := fast_strings(body)) is not None:
        parts.append((len(values), _unplaced))
        values += fast
    else:
        _add_located(values, parts, body)


def _add_located(values: list[str], parts: _Parts, body: bytes) -> None:
    """A JSON body's keys and string values with their places, or the body whole when it
    does not parse."""
    if (found := located(body)) is None:
        parts.append((len(values), lambda _: "body"))
        values.append(body.decode("utf-8", "replace"))
        return

    def where(i: int) -> str:
        tokens = found[i][0]
        return "body" + _pointer(
            "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)
        )

    parts.append((len(values), where))
    values += map(itemgetter(1), found)


def _unplaced(_: int) -> str:
    """Where a string of a JSON body read fast is: not known (:meth:`FastFilter.inspect`
    reads the body again, :func:`_in_json_body`)."""
    return "body"


def _in_json_body(body: bytes) -> Finding | None:
    """The first finding in a JSON body read with its places, or ``None``."""
    values: list[str] = []
    parts: _Parts = []
    _add_located(values, parts, body)
    if (found := _first(values)) is None:
        return None
    i, (category, check_name) = found
    return Finding(category, parts[0][1](i), check_name)


def _value(value: str) -> tuple[Category, str] | None:
    """The category and check of the first attack in ``value`` (as read), or in what
    it becomes when decoded again."""
    if len(value) <= WINDOW:  # most values: one check, no window loop
        if (hit := check(value)) is not None:
            return Category(hit[0]), hit[1]
    elif (found := _windows(value)) is not None:
        return found
    if "%" not in value:
        return None
    layer = value
    for _ in range(_MORE_DECODINGS):
        if "%" not in layer or _ESCAPE.search(layer) is None:
            return None
        layer = unquote_plus(layer, errors="replace")
        if (found := _windows(layer)) is not None:
            return found[0], "double-encoding"
    return None


def _windows(value: str) -> tuple[Category, str] | None:
    if len(value) <= WINDOW:
        found = check(value)
        return None if found is None else (Category(found[0]), found[1])
    for start in range(0, len(value) - OVERLAP, WINDOW - OVERLAP):
        if (found := check(value[start : start + WINDOW])) is not None:
            return Category(found[0]), found[1]
    return None


def _name(name: str) -> str:
    return _UNPRINTABLE.sub("?", name[:_NAME_MAX])


def _pointer(pointer: str) -> str:
    return "/".join(_name(token) for token in pointer.split("/"))
