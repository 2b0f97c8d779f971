"""Managing registration entries and join tokens: what the admin API
(:mod:`trustmesh.identity.admin_app`) and the operator socket
(:mod:`trustmesh.identity.operator`) do, and the service itself.

Each function validates, writes through the store and emits an event (naming the
``actor``, when an admin asked); nothing here needs the CA.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from dataclasses import dataclass

from trustmesh import events
from trustmesh.errors import UsageError
from trustmesh.identity.models import JoinToken, RegistrationEntry, parse_selector
from trustmesh.identity.store import IdentityStore
from trustmesh.platform.admin import Actor, named_by
from trustmesh.reasons import Activity
from trustmesh.spiffeid import require_workload_id

#: A one-time join token is valid for this long by default, and at most ``MAX_JOIN_TTL``.
DEFAULT_JOIN_TTL = dt.timedelta(minutes=10)
MAX_JOIN_TTL = dt.timedelta(hours=24)
MIN_SVID_TTL = dt.timedelta(seconds=10)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hash_join_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ServiceSettings:
    trust_domain: str
    svid_ttl: dt.timedelta
    max_svid_ttl: dt.timedelta
    jwt_svid_ttl: dt.timedelta


def register_entry(
    store: IdentityStore,
    settings: ServiceSettings,
    spiffe_id: str,
    selectors: list[str],
    ttl: dt.timedelta | None,
    sink: events.EventSink,
    *,
    actor: Actor | None = None,
) -> RegistrationEntry:
    """Validate and store a registration entry; TTLs above the enforced maximum are refused.
    ``actor``: who asked, through the admin API (None: the service itself)."""
    require_workload_id(spiffe_id, settings.trust_domain)
    if not selectors:
        raise UsageError("an entry needs at least one selector")
    canonical = frozenset(parse_selector(s) for s in selectors)
    for selector in canonical:
        path = selector.removeprefix("unix:path:")
        if path != selector and os.path.islink(path):
            raise UsageError(
                f"{path} is a symlink; the kernel reports the file it points to: "
                f"use unix:path:{os.path.realpath(path)}"
            )
    if ttl is not None and not MIN_SVID_TTL <= ttl <= settings.max_svid_ttl:
        raise UsageError(
            f"TTL {int(ttl.total_seconds())} s is outside {int(MIN_SVID_TTL.total_seconds())} s"
            f" .. {int(settings.max_svid_ttl.total_seconds())} s (identity.max_svid_ttl, the"
            " enforced maximum)"
        )
    now = utcnow()
    entry = RegistrationEntry(
        id=secrets.token_hex(8), spiffe_id=spiffe_id, selectors=canonical, ttl=ttl, created_at=now
    )
    recorder = events.Recorder(sink, component="identity")
    peer, attributes = named_by(
        actor, {"entry_id": entry.id, "selectors": " ".join(sorted(canonical))}
    )
    made = recorder.build(
        Activity.ENTRY_CREATED,
        "registration entry created",
        now=now,
        spiffe_id=spiffe_id,
        peer_spiffe_id=peer,
        attributes=attributes,
        strict=True,
    )
    store.add_entry(entry)
    recorder.write(made)
    return entry


def remove_entry(
    store: IdentityStore, entry_id: str, sink: events.EventSink, *, actor: Actor | None = None
) -> RegistrationEntry:
    entry = store.remove_entry(entry_id)
    peer, attributes = named_by(actor, {"entry_id": entry.id})
    events.Recorder(sink, component="identity").record(
        Activity.ENTRY_REMOVED,
        "registration entry removed",
        now=utcnow(),
        spiffe_id=entry.spiffe_id,
        peer_spiffe_id=peer,
        attributes=attributes,
        strict=True,
    )
    return entry


def create_join_token(
    store: IdentityStore,
    settings: ServiceSettings,
    spiffe_id: str,
    ttl: dt.timedelta,
    sink: events.EventSink,
    *,
    now: dt.datetime | None = None,
    actor: Actor | None = None,
) -> str:
    """A one-time token for ``spiffe_id``. Only its SHA-256 is stored; the token is
    returned once, to be handed to exactly one process."""
    require_workload_id(spiffe_id, settings.trust_domain)
    if not dt.timedelta(seconds=1) <= ttl <= MAX_JOIN_TTL:
        raise UsageError(
            f"join token TTL must be between 1 s and {int(MAX_JOIN_TTL.total_seconds())} s"
        )
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    recorder = events.Recorder(sink, component="identity")
    peer, attributes = named_by(actor, {"expires_at": (now + ttl).isoformat()})
    made = recorder.build(
        Activity.JOIN_TOKEN_CREATED,
        "join token created",
        now=now,
        spiffe_id=spiffe_id,
        peer_spiffe_id=peer,
        attributes=attributes,
        strict=True,
    )
    store.add_join_token(JoinToken(hash_join_token(token), spiffe_id, now + ttl, now))
    recorder.write(made)
    return token
