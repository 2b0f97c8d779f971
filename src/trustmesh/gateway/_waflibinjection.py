"""libinjection for the fast mode: ``_sqli_c`` (the fingerprint, or ``None``) and ``_xss_c``
over UTF-8 bytes.

They are libinjection's own C entry points (``libinjection_sqli``, ``libinjection_xss``;
they take a length, so a NUL byte does not cut a value short), called through ctypes,
from the first of these that has them and answers a self-test at import:

1. the ModSecurity library of the ``libmodsecurity`` wheel (Apache-2.0; crs mode's
   engine), which carries libinjection (BSD-3-Clause) inside it and exports it — where
   that wheel exists (Linux x86-64, macOS arm64), nothing under another licence is
   installed for the fast mode;
2. the ``libinjection`` extension of ``libinjection-python`` (GPLv3+), which the
   package depends on only on the other platforms; if its C functions do not answer
   the self-test, its Python functions are used (the same C code behind a wrapper that
   builds a token list on every call: ≈ 2 µs a call instead of ≈ 0.3–1 µs).

Neither: :class:`ImportError`, naming what to install (the fast mode is the gateway's
default; it does not start without it).
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["SOURCE", "_sqli_c", "_xss_c"]

Check = tuple[Callable[[bytes], str | None], Callable[[bytes], bool]]

#: What each check must answer (SQL injection, XSS), whichever library gives it.
_PROBES: tuple[tuple[bytes, bool, bool], ...] = (
    (b"1' or '1'='1", True, False),
    (b"1 union select a from b", True, False),
    (b"x\x00' or 1=1--", True, False),  # past a NUL: the length is passed
    (b"O'Brien", False, False),
    (b"select your size", False, False),
    (b"<img src=x onerror=alert(1)>", False, True),
    (b"a=b", False, False),
)


def _entry_points(lib: Any) -> Check | None:
    """libinjection's C functions in ``lib`` (a ctypes library), if it has them."""
    try:
        c_sqli, c_xss = lib.libinjection_sqli, lib.libinjection_xss
    except AttributeError:
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

    return sqli, xss


def _answers(check: Check) -> bool:
    sqli, xss = check
    return all(
        (sqli(probe) is not None, xss(probe)) == (is_sqli, is_xss)
        for probe, is_sqli, is_xss in _PROBES
    )


def _from_modsecurity() -> Check | None:
    try:
        extension = importlib.import_module("libmodsecurity._libmodsecurity")
        # dlsym searches the extension's own dependencies: the ModSecurity library
        return _entry_points(ctypes.PyDLL(extension.__file__))
    except (ImportError, OSError):
        return None


def _from_libinjection_python() -> Check | None:
    try:
        module: Any = importlib.import_module("libinjection")
    except ImportError:
        return None
    try:
        check = _entry_points(ctypes.PyDLL(module.__file__))
    except (OSError, TypeError):
        check = None
    if check is not None and _answers(check):
        return check

    def sqli(data: bytes) -> str | None:
        found = module.is_sql_injection(data.decode("utf-8", "surrogatepass"))
        return str(found["fingerprint"]) if found["is_sqli"] else None

    def xss(data: bytes) -> bool:
        return bool(module.is_xss(data.decode("utf-8", "surrogatepass"))["is_xss"])

    return sqli, xss


def _load() -> tuple[Check, str]:
    for source, find in (
        ("libmodsecurity", _from_modsecurity),
        ("libinjection-python", _from_libinjection_python),
    ):
        check = find()
        if check is not None and _answers(check):
            return check, source
    raise ImportError(
        "the injection filter's fast mode needs libinjection: install the libmodsecurity "
        "wheel (Linux x86-64, macOS arm64) or libinjection-python"
    )


(_sqli_c, _xss_c), SOURCE = _load()
