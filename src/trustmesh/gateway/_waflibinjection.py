"""libinjection for the fast mode: ``_sqli_c`` (the fingerprint, or ``None``) and ``_xss_c``
over UTF-8 bytes.

They are the C entry points of the ``libinjection`` extension (``libinjection_sqli``,
``libinjection_xss``; they take a length, so a NUL byte does not cut a value short) when
they give the module's own answers in a self-test at import; otherwise the module's
Python functions, the same C code behind a wrapper that builds a token list on every
call (≈ 2 µs a call instead of ≈ 0.3–1 µs).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import libinjection  # type: ignore[import-not-found]  # a C extension without stubs


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
