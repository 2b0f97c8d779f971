"""Cross-origin access for browsers (the Fetch standard's CORS protocol), per route.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
answered at the edge — it carries no credentials and never reaches a service: ``204``
with the grants when the origin, the method and every requested header are allowed,
else ``403``. An actual request from an allowed origin gets
``Access-Control-Allow-Origin`` naming that origin (with ``Vary: Origin``); from any
other origin it gets nothing, so the browser withholds the answer from the page.
"""

from __future__ import annotations

from collections.abc import Sequence

from trustmesh.config.gateway import CorsPolicy

__all__ = ["allows_origin", "is_preflight", "preflight_headers", "response_grants"]

Headers = Sequence[tuple[bytes, bytes]]


def _header(headers: Headers, name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


def is_preflight(method: str, headers: Headers) -> str | None:
    """The method a preflight asks about, or None if this is no preflight."""
    if method != "OPTIONS" or _header(headers, b"origin") is None:
        return None
    requested = _header(headers, b"access-control-request-method")
    return requested.decode("latin-1").strip() if requested else None


def allows_origin(policy: CorsPolicy, origin: str) -> bool:
    return origin in policy.origins or ("*" in policy.origins and not policy.credentials)


def preflight_headers(
    policy: CorsPolicy, methods: Sequence[str], headers: Headers
) -> list[tuple[bytes, bytes]] | None:
    """The grants for an allowed preflight, or None (refuse it)."""
    origin = (_header(headers, b"origin") or b"").decode("latin-1")
    method = is_preflight("OPTIONS", headers)
    if not origin or method is None or not allows_origin(policy, origin):
        return None
    if method not in methods:
        return None
    asked = _header(headers, b"access-control-request-headers") or b""
    wanted = {h.strip().lower() for h in asked.decode("latin-1").split(",") if h.strip()}
    if not wanted <= set(policy.headers):
        return None
    grants = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", ", ".join(methods).encode()),
        (b"access-control-allow-headers", ", ".join(policy.headers).encode()),
        (b"access-control-max-age", str(policy.max_age).encode()),
        (b"vary", b"Origin"),
    ]
    if policy.credentials:
        grants.append((b"access-control-allow-credentials", b"true"))
    return grants


def response_grants(policy: CorsPolicy | None, headers: Headers) -> list[tuple[bytes, bytes]]:
    """What an actual response adds for the request's origin (nothing if not allowed)."""
    origin = _header(headers, b"origin")
    if policy is None or origin is None:
        return []
    text = origin.decode("latin-1")
    if not allows_origin(policy, text):
        return []
    grants = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    if policy.credentials:
        grants.append((b"access-control-allow-credentials", b"true"))
    return grants
