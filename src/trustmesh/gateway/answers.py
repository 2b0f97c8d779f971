"""The gateway's own answer in place of an upstream's error.

A service that refuses or fails a request (status ≥ 400) answers in its framework's shape
— ``{"detail": "Method Not Allowed"}``, an HTML page, a stack trace — which tells a client
what runs behind the edge, and sometimes more. Unless the route says to relay it
(``relay_errors``), the gateway answers the same status in its own shape, the one of its
own refusals: ``{"error": <code>, "message": <text>}``, keeping only the headers a client
needs to act on the status (RFC 9110 §15: ``Allow`` on 405, ``WWW-Authenticate`` on 401,
``Retry-After`` on 429 and 503, ``Content-Range`` on 416, ``Accept-*`` on 415; the
RateLimit headers). Pure: a status and headers in, a code, a message and headers out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

from trustmesh.reasons import STATUS_CODES

__all__ = ["ERROR_HEADERS", "error_code", "error_headers", "error_message"]

#: The upstream's headers an error answer keeps (lower-case names).
ERROR_HEADERS: Final = frozenset(
    {
        b"allow",
        b"www-authenticate",
        b"retry-after",
        b"content-range",
        b"accept-patch",
        b"accept-post",
        b"accept-encoding",
        b"accept-ranges",
        b"ratelimit",
        b"ratelimit-policy",
    }
)
_NOT_A_CODE: Final = re.compile(r"[^a-z0-9]+")
_MESSAGES: Final = {
    401: "the service requires another credential",
    403: "the service does not allow this request",
    404: "the service has no such resource",
    405: "the service does not allow this method here",
    429: "the service is receiving too many requests; try again later",
    503: "the service is unavailable; try again",
}


def error_code(status: int) -> str:
    """The ``error`` of the gateway's answer for an upstream's ``status`` (≥ 400)."""
    code = STATUS_CODES.get(status)
    if code is not None:
        return code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "request_refused" if status < 500 else "service_error"
    return _NOT_A_CODE.sub("_", phrase.lower()).strip("_")


def error_message(status: int) -> str:
    """The ``message`` of the gateway's answer for an upstream's ``status`` (≥ 400)."""
    message = _MESSAGES.get(status)
    if message is not None:
        return message
    if status < 500:
        return f"the service refused the request ({status})"
    return f"the service failed to answer the request ({status})"


def error_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Of an upstream's (cleaned, lower-case) response headers, those an error keeps."""
    return [(name, value) for name, value in headers if name in ERROR_HEADERS]
