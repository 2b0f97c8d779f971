"""Where the fast mode's libinjection comes from: the ModSecurity library of the
Apache-2.0 ``libmodsecurity`` wheel where that wheel exists (nothing under the GPL is
installed there), ``libinjection-python`` elsewhere; a library that does not answer the
self-test is never used, and with none the gateway says what to install."""

from __future__ import annotations

import importlib.util
import platform
import sys

import pytest

from trustmesh.gateway import _waflibinjection as li

WHEEL_PLATFORM = sys.version_info < (3, 14) and (
    (sys.platform == "linux" and platform.machine() == "x86_64")
    or (sys.platform == "darwin" and platform.machine() == "arm64")
)


@pytest.mark.skipif(not WHEEL_PLATFORM, reason="no libmodsecurity wheel for this platform")
def test_the_modsecurity_wheel_gives_libinjection_and_nothing_gpl_is_installed() -> None:
    assert li.SOURCE == "libmodsecurity"
    assert importlib.util.find_spec("libinjection") is None  # libinjection-python


def test_the_checks_answer_as_libinjection_does() -> None:
    assert li._sqli_c(b"1' or '1'='1") == "s&sos"
    assert li._sqli_c(b"1 union select a from b") == "1UEnk"
    assert li._sqli_c(b"x\x00' or 1=1--") is not None  # the length is passed: past a NUL
    assert li._sqli_c(b"O'Brien") is None
    assert li._xss_c(b"<img src=x onerror=alert(1)>")
    assert not li._xss_c(b"a=b")


def test_a_library_that_answers_wrong_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def blind(_data: bytes) -> None:
        return None

    def never(_data: bytes) -> bool:
        return False

    assert not li._answers((blind, never))
    assert li._answers((li._sqli_c, li._xss_c))
    monkeypatch.setattr(li, "_from_modsecurity", lambda: (blind, never))
    monkeypatch.setattr(li, "_from_libinjection_python", lambda: (li._sqli_c, li._xss_c))
    assert li._load()[1] == "libinjection-python"


def test_without_libinjection_the_gateway_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(li, "_from_modsecurity", lambda: None)
    monkeypatch.setattr(li, "_from_libinjection_python", lambda: None)
    with pytest.raises(ImportError, match=r"libmodsecurity wheel .* or libinjection-python"):
        li._load()
