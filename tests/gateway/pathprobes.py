"""Spellings of a denied request, by family: what a server, proxy, framework or file system
might take for the operation a policy denies (pure: bytes out, no sockets).

Each :class:`Probe` is one request head, byte for byte: the method, the request target,
the ``Host`` lines (none, one or several) and other header lines. A probe that names
another operation on purpose (an allowed request carrying ``X-Original-URL``, a target
whose ``?`` or ``#`` ends the path) says which raw path the upstream may receive instead
(``may_reach``); every other probe must never reach it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = ["FAMILIES", "Denied", "Probe", "probes"]


@dataclass(frozen=True)
class Denied:
    """An operation a policy denies ``who`` (None: no credential), and its canonical answer."""

    name: str
    method: str
    path: str
    who: str | None
    status: int
    host: str = "localhost"
    allowed: tuple[str, str] = ("GET", "/public/x")  # an allowed operation of ``who``


@dataclass(frozen=True)
class Probe:
    family: str
    method: bytes
    target: bytes
    hosts: tuple[bytes, ...]
    headers: tuple[tuple[bytes, bytes], ...] = ()
    may_reach: str | None = None  # the allowed raw path the upstream may receive instead

    def line(self) -> bytes:
        """The request line: ``method SP target SP HTTP/1.1``, or the whole line as
        written when the target is empty (a probe of the line itself)."""
        if not self.target:
            return self.method
        return self.method + b" " + self.target + b" HTTP/1.1"

    def key(self) -> tuple[bytes, tuple[bytes, ...], tuple[tuple[bytes, bytes], ...]]:
        return (self.line(), self.hosts, self.headers)


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _join(segments: Iterable[str], sep: str = "/") -> str:
    return sep + sep.join(segments)


def _pct(byte: int, lower: bool = False) -> str:
    return f"%{byte:02x}" if lower else f"%{byte:02X}"


def _pct_text(text: str, lower: bool = False) -> str:
    return "".join(_pct(b, lower) for b in _b(text))


# -- the families: each maps the denied operation to request targets (str: UTF-8) ---------
def percent(d: Denied) -> Iterator[str]:
    """Each character percent-encoded (upper and lower hex), each segment, the whole path."""
    p = d.path
    for i, ch in enumerate(p):
        for lower in (False, True):
            yield p[:i] + _pct(ord(ch), lower) + p[i + 1 :]
    segments = p[1:].split("/")
    for i, segment in enumerate(segments):
        for lower in (False, True):
            yield _join([*segments[:i], _pct_text(segment, lower), *segments[i + 1 :]])
    for lower in (False, True):
        yield "/" + _pct_text(p[1:], lower)
        yield _pct_text(p, lower)
        yield "/" + _join(segments, _pct(ord("/"), lower))[3:]


def double(d: Denied) -> Iterator[str]:
    """``%25`` before an escape: ``%252e``, ``%25%32%65``, ``%25252e``, per character."""
    p = d.path
    for i, ch in enumerate(p):
        hexed = f"{ord(ch):02X}"
        for form in (
            "%25" + hexed,
            "%25" + hexed.lower(),
            "%25" + _pct_text(hexed),
            "%2525" + hexed,
            "%" + _pct_text(hexed[0]) + hexed[1],
        ):
            yield p[:i] + form + p[i + 1 :]
    for dd, sl in itertools.product(
        ("%252e%252e", "%25%32%65%25%32%65", "%252E%252E"), ("/", "%252f")
    ):
        yield f"/public{sl}{dd}{sl}{p[1:]}"


def _overlong(byte: int) -> tuple[str, ...]:
    two = (0xC0 | byte >> 6, 0x80 | byte & 0x3F)
    three = (0xE0, 0x80 | byte >> 6, 0x80 | byte & 0x3F)
    four = (0xF0, 0x80, 0x80 | byte >> 6, 0x80 | byte & 0x3F)
    return (
        "".join(map(_pct, two)),
        "".join(_pct(b, True) for b in two),
        "".join(map(_pct, three)),
        "".join(map(_pct, four)),
    )


def overlong(d: Denied) -> Iterator[str]:
    """Overlong UTF-8 (``%c0%ae``, ``%e0%80%ae``, ``%c0%af``) of each character, and dot
    segments climbing back from ``/public`` spelled so."""
    p = d.path
    for i, ch in enumerate(p):
        for form in _overlong(ord(ch)):
            yield p[:i] + form + p[i + 1 :]
    dots = _overlong(ord("."))
    slashes = (*_overlong(ord("/")), "%c1%9c", "%c0%5c")
    for dot, slash in itertools.product(dots[::2], slashes[::2]):
        yield f"/public{slash}{dot}{dot}{slash}{p[1:]}"
        yield f"/public/{dot}{dot}/{p[1:]}"
    yield p.replace("/", "\udcc0\udcaf")  # raw overlong bytes (C0 AF), not escaped


_DOT = (".", "%2e", "%2E")
_DOTDOT = ("..", ".%2e", "%2e.", "%2e%2e", "%2E%2E", ".%2E", "%2E.", "%2e%2E")


def dots(d: Denied) -> Iterator[str]:
    """``/./``, ``/../`` (climbing back into the path from an allowed one), plain and
    ``%2e``/``%2E``."""
    p = d.path
    segments = p[1:].split("/")
    for dot in _DOT:
        yield f"/{dot}{p}"
        yield f"{p}/{dot}"
        yield f"{p}/{dot}/"
        for i in range(1, len(segments)):
            yield _join([*segments[:i], dot, *segments[i:]])
    for dd in _DOTDOT:
        yield f"/public/{dd}{p}"
        yield f"/public/x/{dd}/{dd}{p}"
        yield f"/{dd}{p}"
        yield f"/{dd}/{dd}{p}"
        yield f"{p}/x/{dd}"
        yield f"/public/./{dd}{p}"
        for i, segment in enumerate(segments):
            yield _join([*segments[:i], "x", dd, segment, *segments[i + 1 :]])
    yield f"/public/../{p[1:]}/."


def backslash(d: Denied) -> Iterator[str]:
    """A backslash for each slash (raw, ``%5c``, ``%5C``), and climbing with it."""
    p = d.path
    slashes = [i for i, ch in enumerate(p) if ch == "/"]
    for sep in ("\\", "%5c", "%5C"):
        for i in slashes:
            yield p[:i] + sep + p[i + 1 :]
        yield p.replace("/", sep)
        yield "/" + p[1:].replace("/", sep)
        for dd in ("..", "%2e%2e"):
            yield f"/public{sep}{dd}{sep}{p[1:]}"
            yield f"/public/{dd}{sep}{p[1:]}"
        yield f"{p}{sep}"
        yield f"/{sep}{p[1:]}"


def matrix(d: Denied) -> Iterator[str]:
    """``;`` parameters after each segment, raw and encoded (``/admin;x=1/orders``,
    ``/public/..;/admin/orders``)."""
    p = d.path
    segments = p[1:].split("/")
    for param in (";", ";x=1", ";jsessionid=0", "%3b", "%3B", "%3bx=1", ";/"):
        for i in range(len(segments)):
            yield _join([*segments[:i], segments[i] + param, *segments[i + 1 :]])
        yield f"/{param}{p[1:]}" if param != ";/" else f"/;{p}"
    for dd in ("..;", "..%3b", ".;", "%2e%2e;"):
        yield f"/public/{dd}{p}"
    yield f"/public;x=/../{p[1:]}"
    yield f"/.;{p}"


def slashes(d: Denied) -> Iterator[str]:
    """Doubled and tripled slashes at each boundary, and everywhere."""
    p = d.path
    segments = p[1:].split("/")
    for extra in ("/", "//"):
        for i in range(len(segments) + 1):
            yield "/" + "/".join(segments[:i]) + ("/" if i else "") + extra + "/".join(segments[i:])
        yield _join(segments, "/" + extra)
    yield p + "/"


def _cases(segment: str) -> set[str]:
    alternating = "".join(c.upper() if i % 2 else c for i, c in enumerate(segment))
    return {segment.upper(), segment.capitalize(), segment.swapcase(), alternating, segment}


def case(d: Denied) -> Iterator[str]:
    """Each combination of each segment in other cases (upper, capitalised, alternating)."""
    segments = d.path[1:].split("/")
    for combo in itertools.product(*(sorted(_cases(s)) for s in segments)):
        if list(combo) != segments:
            yield _join(combo)


_TRAILING = (".", "..", "...", " ", "%20", "%09", "%0a", "%0d", "%0b", "%0c", "%a0", "%c2%a0",
             "+", "~", "%2e", "::$DATA", ". ", ".%20", "%20.")  # fmt: skip


def trailing(d: Denied) -> Iterator[str]:
    """Trailing dots and spaces (raw, ``%20``, ``%09`` …) after each segment: Windows and
    some file servers drop them."""
    segments = d.path[1:].split("/")
    for suffix in _TRAILING:
        for i in range(len(segments)):
            yield _join([*segments[:i], segments[i] + suffix, *segments[i + 1 :]])


def nul(d: Denied) -> Iterator[str]:
    """NUL: ``%00`` at each boundary and before an extension, raw NUL bytes, ``%2500``,
    overlong ``%c0%80``."""
    p = d.path
    for i in range(1, len(p) + 1):
        yield p[:i] + "%00" + p[i:]
    for form in ("%00.json", "%00/", "\x00", "\x00.json", "%2500", "%c0%80", "%u0000"):
        yield p + form
    yield p.replace("/", "\x00/")


_FULL = {c: chr(ord(c) + 0xFEE0) for c in "abcdefghijklmnopqrstuvwxyz0123456789_./\\"}
_LOOKALIKE = {"o": "\u2134", "s": "\u017f", "i": "\u0131", "k": "\u212a", "/": "\u2215"}


def fullwidth(d: Denied) -> Iterator[str]:
    """Unicode full-width forms (``／``, ``．``, ``ａｄｍｉｎ``) and other NFKC or case-fold
    lookalikes, raw UTF-8, percent-encoded, and IIS ``%u`` escapes."""
    p = d.path
    segments = p[1:].split("/")
    for i, segment in enumerate(segments):
        wide = "".join(_FULL.get(c, c) for c in segment)
        for form in (wide, _pct_text(wide), _pct_text(wide, True), wide[0] + segment[1:]):
            yield _join([*segments[:i], form, *segments[i + 1 :]])
        for c, look in _LOOKALIKE.items():
            if c in segment:
                yield _join([*segments[:i], segment.replace(c, look), *segments[i + 1 :]])
                yield _join(
                    [*segments[:i], segment.replace(c, _pct_text(look)), *segments[i + 1 :]]
                )
    for sl in ("\uff0f", "%ef%bc%8f", "%EF%BC%8F", "%uff0f", "\u2215", "%e2%88%95", "\u2044"):
        yield "/" + p[1:].replace("/", sl)
        yield sl + p[1:]
    for dot in ("\uff0e", "%uff0e", "%u002e"):
        yield f"/public/{dot}{dot}{p}"
        yield f"/public\uff0f{dot}{dot}\uff0f{p[1:]}"
    yield "".join(_FULL.get(c, c) for c in p)


#: Percent-encoded UTF-8 of characters that NFKC maps to ``.``, ``..`` and ``/``: U+FF0E
#: FULLWIDTH FULL STOP, U+2024 ONE DOT LEADER, U+FE52 SMALL FULL STOP, U+2025 TWO DOT
#: LEADER, U+FF0F FULLWIDTH SOLIDUS (upper and lower hex).
_NFKC_DOTDOT = ("%ef%bc%8e%ef%bc%8e", "%EF%BC%8E%EF%BC%8E", "%e2%80%a4%e2%80%a4",
                "%ef%b9%92%ef%b9%92", "%e2%80%a5", "%E2%80%A5", "%ef%bc%8e.", ".%ef%bc%8e")  # fmt: skip
_NFKC_SLASH = ("%ef%bc%8f", "%EF%BC%8F")


def nfkc_climb(d: Denied) -> Iterator[str]:
    """Climbing back from ``/public`` with a dot segment or slashes spelled in characters
    that NFKC (Unicode compatibility normalisation, as some servers and "best-fit" code
    page conversions apply) turns into ``..`` and ``/``, percent-encoded: each decodes to
    valid UTF-8 that is not ``.`` or ``..``, so it is canonical to the gateway."""
    p = d.path
    for dd in _NFKC_DOTDOT:
        yield f"/public/{dd}{p}"
        yield f"/public/x/{dd}/{dd}{p}"
    for sl in _NFKC_SLASH:
        yield f"/public{sl}..{sl}{p[1:]}"
        yield f"/public/x{sl}..{sl}..{p}"
        for dd in _NFKC_DOTDOT[:2]:
            yield f"/public{sl}{dd}{sl}{p[1:]}"


def query(d: Denied) -> Iterator[tuple[str, str | None]]:
    """``%3F``/``%23`` (encoded ``?`` and ``#``) inside the path, and real ``?`` and ``#``:
    what follows them is not the path, so a target whose path is an allowed one may reach
    the upstream — with that path."""
    p = d.path
    for form in ("%3F", "%3f", "%23", "%253F", "%2523", "%3F%23"):
        for i in range(1, len(p) + 1):
            if i == len(p) or p[i] == "/":
                yield p[:i] + form + p[i:], None
        yield f"/public{form}/..{p}", None
        yield f"/public/x{form}/../..{p}", None
    for suffix in ("?", "?x=1", "#", "#x", "?#", "#/../../public/x", "?/../../public/x"):
        yield p + suffix, None
    for sep in ("?", "#", "?x=", "#x/"):
        yield f"/public/x{sep}/../..{p}", "/public/x"


def absolute(d: Denied) -> Iterator[str]:
    """Absolute-form and other non-origin request targets naming the path."""
    p, h = d.path, d.host
    for authority in (h, f"{h}:443", f"{h.upper()}", f"{h}.", "evil.example", "127.0.0.1",
                      "ops.localhost" if h == "localhost" else "localhost"):  # fmt: skip
        for scheme in ("https", "http", "HTTPS"):
            yield f"{scheme}://{authority}{p}"
    yield f"https://{h}/public/..{p}"
    yield f"https://{h}/public/x#{p}"
    yield f"https://user@{h}{p}"
    yield f"//{h}{p}"
    yield "/" + p
    yield p[1:]
    yield "." + p
    yield "*" + p
    yield f"{h}:443"
    yield f"ws://{h}{p}"


def request_line(d: Denied) -> Iterator[bytes]:
    """Whole request lines: other separators, versions and method spellings."""
    m, p = d.method.encode(), d.path.encode()
    yield m + b"\t" + p + b"\tHTTP/1.1"
    yield m + b"  " + p + b" HTTP/1.1"
    yield m + b" " + p + b"  HTTP/1.1"
    yield m + b" " + p + b" HTTP/1.1 "
    yield m + b" " + p + b" HTTP/1.0"
    yield m + b" " + p + b" HTTP/2.0"
    yield m + b" " + p + b" HTTP/0.9"
    yield m + b" " + p
    yield m.lower() + b" " + p + b" HTTP/1.1"
    yield m + b" " + p + b" http/1.1"
    yield m + b" " + p + b"\x00 HTTP/1.1"
    yield m + b" " + p + b" HTTP/1.1\x00"
    yield m + b" " + p + b" / HTTP/1.1"
    yield m + b" /public/x " + p + b" HTTP/1.1"


def hosts(d: Denied) -> Iterator[tuple[tuple[bytes, ...], tuple[tuple[bytes, bytes], ...]]]:
    """Host tricks on the denied request: a port, a trailing dot, another case, none,
    empty, repeated, odd characters, another host, header-name spellings, and the
    headers that name a host for frameworks (``X-Forwarded-Host``, ``Forwarded``)."""
    h = d.host
    other = "localhost" if h != "localhost" else "ops.localhost"
    values = [f"{h}:443", f"{h}:8443", f"{h}.", f"{h}.:443", h.upper(), h.title(), f"{h}:",
              f"{h}:0", f"{h}:99999", f"{h}:abc", "127.0.0.1", "127.0.0.1:443", "[::1]",
              "[::1]:443", "evil.example", other, "", f" {h}", f"{h} ", f"{h}\t", f"{h}..",
              f"{h},evil.example", f"{h}@evil.example", f"evil.example@{h}", f"{h}%2e",
              f"{h}/admin", f"{h}:443:443", f"{h}\x00", f"{h}\x00.evil.example", f"{h}#",
              f"{h}?", "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", "*",
              "xn--" + h, f"{h}.evil.example", f"{other}:443"]  # fmt: skip
    for value in values:
        yield (_b(value),), ()
    yield (), ()
    yield (_b(h), _b(h)), ()
    yield (_b(h), b"evil.example"), ()
    yield (b"evil.example", _b(h)), ()
    yield (_b(other), _b(h)), ()
    yield (_b(h), _b(other)), ()
    yield (), ((b"HOST", _b(h)),)
    yield (), ((b"hOsT", _b(other)),)
    yield (), ((b"Host ", _b(h)),)
    yield (), ((b" Host", _b(h)),)
    yield (_b(h),), ((b"Host", b""),)
    yield (_b(h),), ((b" " + _b(other), b""),)  # an obs-fold continuation of Host
    yield (_b(other),), ((b"\t" + _b(h), b""),)
    for name in (b"X-Forwarded-Host", b"X-Host", b"X-Original-Host", b"X-Forwarded-Server"):
        for value in (_b(other), _b(h), b"evil.example"):
            yield (_b(h),), ((name, value),)
    yield (_b(h),), ((b"Forwarded", b"host=" + _b(other)),)
    yield (_b(h),), ((b"Forwarded", b"for=127.0.0.1;host=" + _b(other) + b";proto=https"),)


REWRITES = (b"X-Original-URL", b"X-Original-URI", b"X-Rewrite-URL", b"X-Forwarded-Prefix",
            b"X-Forwarded-Path", b"X-Forwarded-Uri", b"X-Envoy-Original-Path",
            b"X-HTTP-DestinationURL", b"X-Original-Path", b"X-Forwarded-Url")  # fmt: skip
#: Headers naming another URL that the gateway does not strip (a finding: see the tests):
#: X-Script-Name (the mount prefix a proxy hands a WSGI app: the "ReverseProxied" recipe
#: sets SCRIPT_NAME from it and cuts it off PATH_INFO), X-Override-URL and X-Request-URI
#: (on the lists of 403-bypass scanners).
UNSTRIPPED_REWRITES = (b"X-Script-Name", b"X-Override-URL", b"X-Request-URI")
METHOD_OVERRIDES = (b"X-HTTP-Method-Override", b"X-HTTP-Method", b"X-Method-Override")


def _rewrite_values(d: Denied) -> tuple[str, ...]:
    p = d.path
    return (p, p + "/", p.upper(), "/public/.." + p, "https://localhost" + p, p[1:])


def rewrites(d: Denied) -> Iterator[tuple[tuple[bytes, bytes], ...]]:
    """Headers naming the denied path (or method) on an allowed request: the upstream may
    be reached, with the allowed path and none of these headers."""
    p = d.path
    values = _rewrite_values(d)
    for name in REWRITES:
        for value in values:
            yield ((name, _b(value)),)
        yield ((name.lower(), _b(p)),)
        yield ((name.upper(), _b(p)),)
    for name in METHOD_OVERRIDES:
        for value in (d.method, "DELETE", "PUT"):
            yield ((name, _b(value)),)
    yield ((b"X-Original-URL", _b(p)), (b"X-Rewrite-URL", _b(p)), (b"X-Forwarded-Prefix", b"/"))


# -- assembling probes -------------------------------------------------------------------
def _raw(text: str) -> bytes:
    """UTF-8, with lone surrogates standing for raw bytes (``\\udcc0`` is the byte C0)."""
    return text.encode("utf-8", "surrogateescape")


def _targets(
    family: str, make: Callable[[Denied], Iterable[str]]
) -> Callable[[Denied], Iterator[Probe]]:
    def build(d: Denied) -> Iterator[Probe]:
        for target in make(d):
            yield Probe(family, d.method.encode(), _raw(target), (_b(d.host),))

    return build


def _query(d: Denied) -> Iterator[Probe]:
    for target, may in query(d):
        yield Probe("query-fragment", d.method.encode(), _raw(target), (_b(d.host),), may_reach=may)


def _request_line(d: Denied) -> Iterator[Probe]:
    for line in request_line(d):
        # the whole line is in ``method`` (an empty target: the sender writes it as is)
        yield Probe("request-line", line, b"", (_b(d.host),))


def _hosts(d: Denied) -> Iterator[Probe]:
    for host_lines, headers in hosts(d):
        yield Probe("host", d.method.encode(), _b(d.path), host_lines, headers)


def unstripped_rewrites(d: Denied) -> Iterator[tuple[tuple[bytes, bytes], ...]]:
    """:data:`UNSTRIPPED_REWRITES` naming the denied path on an allowed request."""
    for name in UNSTRIPPED_REWRITES:
        for value in _rewrite_values(d):
            yield ((name, _b(value)),)
        yield ((name.lower(), _b(d.path)),)


def _headers(
    family: str, make: Callable[[Denied], Iterable[tuple[tuple[bytes, bytes], ...]]]
) -> Callable[[Denied], Iterator[Probe]]:
    def build(d: Denied) -> Iterator[Probe]:
        method, path = d.allowed
        for headers in make(d):
            yield Probe(family, method.encode(), _b(path), (_b(d.host),), headers, path)

    return build


FAMILIES: dict[str, Callable[[Denied], Iterator[Probe]]] = {
    "percent": _targets("percent", percent),
    "double": _targets("double", double),
    "overlong": _targets("overlong", overlong),
    "dots": _targets("dots", dots),
    "backslash": _targets("backslash", backslash),
    "matrix": _targets("matrix", matrix),
    "slashes": _targets("slashes", slashes),
    "case": _targets("case", case),
    "trailing": _targets("trailing", trailing),
    "nul": _targets("nul", nul),
    "fullwidth": _targets("fullwidth", fullwidth),
    "query-fragment": _query,
    "absolute-form": _targets("absolute-form", absolute),
    "request-line": _request_line,
    "host": _hosts,
    "rewrite-headers": _headers("rewrite-headers", rewrites),
    # findings (strict xfail in the live suite): see its module docstring
    "nfkc-climb": _targets("nfkc-climb", nfkc_climb),
    "rewrite-unstripped": _headers("rewrite-unstripped", unstripped_rewrites),
}


def probes(d: Denied, families: Iterable[str] = FAMILIES) -> list[Probe]:
    """The distinct probes of ``d`` in these families (the first family to produce a
    request keeps it), never the canonical request itself."""
    canonical = (_b(f"{d.method} {d.path} HTTP/1.1"), (_b(d.host),), ())
    seen = {canonical}
    out: list[Probe] = []
    for family in families:
        for probe in FAMILIES[family](d):
            if probe.key() not in seen:
                seen.add(probe.key())
                out.append(probe)
    return out
