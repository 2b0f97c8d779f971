"""SPIFFE IDs (spiffe/standards SPIFFE-ID.md): ``spiffe://<trust-domain>/<path>``."""

from __future__ import annotations

import re

from trustmesh.errors import UsageError

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_LENGTH = 2048


def parse_spiffe_id(value: str) -> tuple[str, str]:
    """Split a SPIFFE ID into (trust domain, path); raise UsageError naming what is wrong.

    Rules from SPIFFE-ID §2: scheme ``spiffe`` in lower case, a trust domain of
    ``[a-z0-9._-]``, no port, userinfo, query or fragment; path segments of
    ``[A-Za-z0-9._-]``, never empty, ``.`` or ``..``, no trailing slash.
    """
    if len(value) > MAX_LENGTH:
        raise UsageError("SPIFFE ID too long")
    if not value.startswith("spiffe://"):
        raise UsageError(f"{value!r}: a SPIFFE ID starts with 'spiffe://'")
    rest = value[len("spiffe://") :]
    trust_domain, sep, path = rest.partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise UsageError(
            f"{value!r}: the trust domain may hold only lowercase letters, digits, '.', '-', '_'"
        )
    if not sep:
        return trust_domain, ""
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise UsageError(
                f"{value!r}: path segments are non-empty [A-Za-z0-9._-], never '.' or '..'"
            )
    return trust_domain, "/" + path


def require_workload_id(value: str, trust_domain: str) -> str:
    """A SPIFFE ID with a path, in ``trust_domain``: what an SVID may carry."""
    td, path = parse_spiffe_id(value)
    if td != trust_domain:
        raise UsageError(f"{value!r} is not in trust domain {trust_domain!r}")
    if not path:
        raise UsageError(f"{value!r} names a trust domain, not a workload")
    return value
