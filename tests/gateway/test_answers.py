"""The gateway's own answer for an upstream's error: a code and a message for any status,
and only the headers a client needs."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from trustmesh.gateway.answers import ERROR_HEADERS, error_code, error_headers, error_message


def test_codes_speak_the_gateways_vocabulary() -> None:
    assert error_code(405) == "method_not_allowed"
    assert error_code(429) == "rate_limited"
    assert error_code(503) == "unavailable"
    assert error_code(409) == "conflict"
    assert error_code(422) == "unprocessable_entity"
    assert error_code(418) == "i_m_a_teapot"
    assert error_code(499) == "request_refused"
    assert error_code(599) == "service_error"
    assert error_message(409) == "the service refused the request (409)"
    assert error_message(599) == "the service failed to answer the request (599)"


@given(st.integers(min_value=400, max_value=599))
def test_every_error_status_has_a_code_and_a_message(status: int) -> None:
    assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", error_code(status))
    assert error_message(status).startswith("the service")


def test_only_the_headers_a_client_needs_are_kept() -> None:
    upstream = [
        (b"allow", b"POST"),
        (b"www-authenticate", b"Bearer"),
        (b"retry-after", b"7"),
        (b"set-cookie", b"a=1"),
        (b"x-debug", b"SELECT"),
        (b"content-type", b"text/html"),
        (b"server", b"uvicorn"),
    ]
    kept = error_headers(upstream)
    assert kept == [(b"allow", b"POST"), (b"www-authenticate", b"Bearer"), (b"retry-after", b"7")]
    assert all(name in ERROR_HEADERS for name, _ in kept)
