"""Request paths in one canonical form, so that a path pattern can never be tricked.

The raw path (as received, still percent-encoded) is accepted only if it is already
canonical; anything a server, proxy or framework might normalise differently is refused
(→ 400), never "fixed up":

- dot segments (``/./``, ``/../``, a trailing ``/.`` or ``/..``), encoded or not;
- empty segments (``//``) and a backslash (``\\``, ``%5C``), which some stacks treat as ``/``;
- ``;`` (path parameters, RFC 3986 §3.3: ``/admin;x=1`` matches ``/admin`` in some servers);
- ``%2F`` (a slash hidden in a segment), ``%00`` and every other control byte;
- ``%3F`` and ``%23``: decoded, they would read as the start of a query or a fragment to
  whatever parses the path again (a proxy's client, a framework), so the path a policy
  decided on would not be the one served;
- ``%25`` (double encoding: ``%252e`` is ``%2e`` after one decode);
- a percent-encoded unreserved character (``%41`` for ``A``): RFC 3986 §6.2.2.2 says it
  is equivalent to the literal, so two spellings would name one resource;
- malformed escapes (``%`` not followed by two hex digits), non-ASCII raw bytes;
- an escaped non-ASCII character that Unicode compatibility normalisation (NFKC, or a
  best-fit mapping) turns into ``.``, ``/``, ``\\``, ``;``, ``?``, ``#`` or ``%``:
  ``%EF%BC%8E%EF%BC%8E`` (full-width ``．．``) is ``..`` to a server that normalises.

What remains is decoded once, and that is the path patterns are matched against.

:func:`lenient_path` is the counter-example, for the test switch ``path-normalisation``
only (:mod:`trustmesh.config.switches`): what a lenient server makes of such a path.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from urllib.parse import unquote

__all__ = ["NonCanonicalPath", "canonical_path", "lenient_path"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar (RFC 3986 §3.3) without ';' and without '%' (escapes are handled apart)
_LITERAL = _UNRESERVED | frozenset(b"!$&'()*+,=:@/")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_FORBIDDEN_ESCAPED = (
    frozenset({0x25, 0x2F, 0x5C, 0x3B, 0x2E, 0x3F, 0x23}) | frozenset(range(0x20)) | {0x7F}
)
MAX_PATH = 4096
#: What a non-ASCII character may not become under compatibility normalisation.
_SEPARATORS = frozenset("./\\;?#%")
# the common case: only literal characters, no escape, no dot or empty segment
_PLAIN = re.compile(rb"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)+/?|/")


class NonCanonicalPath(ValueError):
    """Why a path was refused (for the event; the client only learns ``400``). Not a
    frozen dataclass: Python sets ``__traceback__`` on an exception as it travels."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why

    def __str__(self) -> str:
        return self.why


def canonical_path(raw: bytes) -> str:
    """The decoded path, if ``raw`` is canonical; raise NonCanonicalPath otherwise."""
    if not raw.startswith(b"/"):
        raise NonCanonicalPath("not an absolute path")
    if len(raw) > MAX_PATH:
        raise NonCanonicalPath("path too long")
    if _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    return _canonical_path_slow(raw)


def _canonical_path_slow(raw: bytes) -> str:
    """:func:`canonical_path` byte by byte (every path with an escape or a refusal)."""
    if not raw.startswith(b"/"):
        raise NonCanonicalPath("not an absolute path")
    if len(raw) > MAX_PATH:
        raise NonCanonicalPath("path too long")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # '%'
            match = _ESCAPE.match(raw, i)
            if match is None:
                raise NonCanonicalPath("malformed percent-escape")
            value = int(match.group(1), 16)
            if value in _FORBIDDEN_ESCAPED:
                raise NonCanonicalPath(f"forbidden escape %{value:02X}")
            if value in _UNRESERVED:
                raise NonCanonicalPath(f"needlessly escaped character %{value:02X}")
            out.append(value)
            i += 3
            continue
        if byte not in _LITERAL:
            raise NonCanonicalPath(f"character 0x{byte:02X} not allowed in a path")
        out.append(byte)
        i += 1
    segments = bytes(out).split(b"/")[1:]
    for position, segment in enumerate(segments):
        if segment in (b".", b".."):
            raise NonCanonicalPath("dot segment")
        if segment == b"" and position != len(segments) - 1:
            raise NonCanonicalPath("empty segment")
    try:
        path = out.decode("utf-8")
    except UnicodeDecodeError:
        raise NonCanonicalPath("escapes do not decode to UTF-8") from None
    if not path.isascii():
        _no_compatibility_separators(path)
    return path


def _no_compatibility_separators(path: str) -> None:
    """A character that Unicode compatibility normalisation (NFKC/NFKD, which some
    servers and frameworks apply, and Windows' best-fit mapping) turns into ``.``, ``/``,
    ``\\``, ``;``, ``?``, ``#`` or ``%`` would make another path of this one there
    (``．．`` is ``..``)."""
    for char in path:
        if char.isascii():
            continue
        folded = unicodedata.normalize("NFKC", char)
        if any(c in _SEPARATORS for c in folded):
            raise NonCanonicalPath(f"U+{ord(char):04X} normalises to a path separator or dot")


def lenient_path(raw: bytes) -> str:
    """What a lenient server makes of a raw path, where :func:`canonical_path` refuses:
    escapes decoded once, ``\\`` read as ``/``, dot and empty segments resolved. Only the
    test switch ``path-normalisation`` uses it, to show what the refusal prevents (a dot
    segment moving a request onto another route)."""
    if not raw.startswith(b"/"):
        raise NonCanonicalPath("not an absolute path")
    resolved = posixpath.normpath(unquote(raw.decode("latin-1")).replace("\\", "/"))
    return "/" + resolved.lstrip("/")
