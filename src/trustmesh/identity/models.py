"""Registration entries, selectors, join tokens and bindings (frozen values)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from trustmesh.errors import UsageError

#: Selector kinds of the unix workload attestor (names as SPIRE's `unix` plugin uses them).
SELECTOR_KINDS = ("uid", "gid", "user", "group", "path", "sha256")
_SELECTOR_VALUE = {
    "uid": re.compile(r"^[0-9]{1,10}$"),
    "gid": re.compile(r"^[0-9]{1,10}$"),
    "user": re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$"),
    "group": re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$"),
    "path": re.compile(r"^/[^\x00-\x1f]{0,4095}$"),
    "sha256": re.compile(r"^[0-9a-f]{64}$"),
}


def parse_selector(text: str) -> str:
    """Validate ``unix:<kind>:<value>`` and return its canonical form."""
    parts = text.split(":", 2)
    if len(parts) != 3 or parts[0] != "unix":
        raise UsageError(
            f"selector {text!r}: expected unix:<kind>:<value>, kind one of {', '.join(SELECTOR_KINDS)}"
        )
    _, kind, value = parts
    if kind not in _SELECTOR_VALUE:
        raise UsageError(
            f"selector {text!r}: unknown kind {kind!r} (expected one of {', '.join(SELECTOR_KINDS)})"
        )
    if kind == "sha256":
        value = value.lower()
    if kind in ("uid", "gid") and _SELECTOR_VALUE[kind].fullmatch(value):
        value = str(int(value))  # one spelling: "0001" is uid 1
    if not _SELECTOR_VALUE[kind].fullmatch(value):
        raise UsageError(f"selector {text!r}: invalid {kind} value")
    return f"unix:{kind}:{value}"


@dataclass(frozen=True)
class RegistrationEntry:
    """A workload that presents every one of ``selectors`` may hold ``spiffe_id``."""

    id: str
    spiffe_id: str
    selectors: frozenset[str]
    ttl: dt.timedelta | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def matches(self, workload_selectors: frozenset[str]) -> bool:
        return bool(self.selectors) and self.selectors <= workload_selectors


@dataclass(frozen=True)
class JoinToken:
    """A one-time, short-lived token; only its SHA-256 is ever stored."""

    token_hash: str
    spiffe_id: str
    expires_at: dt.datetime
    created_at: dt.datetime
    used_at: dt.datetime | None = None


@dataclass(frozen=True)
class Binding:
    """A process (pid + start time: unique per boot) that redeemed a join token."""

    pid: int
    start_time: int
    spiffe_id: str
    created_at: dt.datetime


@dataclass(frozen=True)
class IssuedSVID:
    """Public facts about the last X.509-SVID issued for a SPIFFE ID (for `svid show`)."""

    spiffe_id: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    chain_pem: str
    issued_at: dt.datetime


@dataclass(frozen=True)
class Suspension:
    """``spiffe_id`` may hold no SVID, and services refuse it, until ``until`` (ms since
    the epoch; None: until lifted). ``by``: who suspended it (``operator``, ``audit``,
    ``user:<name>``); ``created``: when (ms)."""

    spiffe_id: str
    until: int | None
    cause: str
    created: int
    by: str

    def active(self, now_ms: int) -> bool:
        return self.until is None or now_ms < self.until
