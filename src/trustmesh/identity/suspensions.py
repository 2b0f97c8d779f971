"""Suspending a SPIFFE ID: while suspended, the identity service issues it no SVID (neither
new nor renewed; a join token for it is not redeemed) and services refuse a peer that
presents it (they poll the feed, :func:`feed_doc`, through the discovery listener).

What the admin API (:mod:`trustmesh.identity.admin_app`) does: each function validates,
writes through the store and emits an event naming who asked (``spiffe-id-suspended``,
``spiffe-id-restored``). Never suspended: a SPIFFE ID of another trust domain, the trust
domain itself, and the trust domain's own control plane (``spiffe://<td>/trustmesh/…``:
the identity service, the provider, the gateway, audit, the operator) — a detection rule
must not be able to take the platform, or the operator who would undo it, down.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from trustmesh import events
from trustmesh.errors import PermissionDeniedError, UsageError
from trustmesh.identity.models import Suspension
from trustmesh.identity.store import IdentityStore
from trustmesh.platform.admin import Actor, named_by
from trustmesh.reasons import Activity
from trustmesh.spiffeid import parse_spiffe_id, require_workload_id

__all__ = [
    "CONTROL_PLANE",
    "MAX_CAUSE",
    "MAX_SUSPENSION",
    "check_suspendable",
    "feed_doc",
    "lift",
    "suspend",
    "suspension_doc",
]

#: A suspension ends after at most this long (none given: it lasts until lifted).
MAX_SUSPENSION: Final = dt.timedelta(days=30)
MAX_CAUSE: Final = 256
#: The path below which a trust domain's own components live (never suspended).
CONTROL_PLANE: Final = "/trustmesh"


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def check_suspendable(spiffe_id: object, trust_domain: str) -> str:
    """``spiffe_id``, if it is a workload's SPIFFE ID of ``trust_domain`` outside its
    control plane: else :class:`UsageError` (400: not such an ID) or
    :class:`PermissionDeniedError` (403: the control plane)."""
    if not isinstance(spiffe_id, str):
        raise UsageError("spiffe_id: expected a SPIFFE ID")
    require_workload_id(spiffe_id, trust_domain)
    _, path = parse_spiffe_id(spiffe_id)
    if path == CONTROL_PLANE or path.startswith(CONTROL_PLANE + "/"):
        raise PermissionDeniedError(
            f"{spiffe_id} belongs to the trust domain's control plane"
            f" (spiffe://{trust_domain}{CONTROL_PLANE}/…), which is never suspended"
        )
    return spiffe_id


def _seconds(value: object) -> int | None:
    if value is None:
        return None
    longest = int(MAX_SUSPENSION.total_seconds())
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= longest:
        raise UsageError(f"seconds: expected a whole number from 1 to {longest} (30 days)")
    return value


def _cause(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_CAUSE or not value.isprintable():
        raise UsageError(f"cause: expected printable text of at most {MAX_CAUSE} characters")
    return value


def suspend(
    store: IdentityStore,
    trust_domain: str,
    spiffe_id: object,
    seconds: object,
    cause: object,
    sink: events.EventSink,
    *,
    actor: Actor,
    now: dt.datetime,
) -> Suspension:
    """Suspend ``spiffe_id`` for ``seconds`` (None: until lifted) — checked first, so that
    bad input changes nothing. Suspending again replaces the end and the cause."""
    checked = check_suspendable(spiffe_id, trust_domain)
    length, why = _seconds(seconds), _cause(cause)
    created = _ms(now)
    suspension = Suspension(
        spiffe_id=checked,
        until=None if length is None else created + length * 1000,
        cause=why,
        created=created,
        by=actor.name,
    )
    recorder = events.Recorder(sink, component="identity")
    peer, attributes = named_by(actor, _attributes(suspension))
    made = recorder.build(
        Activity.SPIFFE_ID_SUSPENDED,
        "SPIFFE ID suspended" + (f" for {length}s" if length else " until lifted"),
        now=now,
        spiffe_id=checked,
        peer_spiffe_id=peer,
        attributes=attributes,
        strict=True,
    )
    store.suspend(suspension)
    recorder.write(made)
    return suspension


def lift(
    store: IdentityStore,
    trust_domain: str,
    spiffe_id: object,
    sink: events.EventSink,
    *,
    actor: Actor,
    now: dt.datetime,
) -> Suspension | None:
    """Lift ``spiffe_id``'s suspension: the one lifted, or None (none was in force, and
    nothing is recorded)."""
    if not isinstance(spiffe_id, str):
        raise UsageError("spiffe_id: expected a SPIFFE ID")
    require_workload_id(spiffe_id, trust_domain)
    lifted = store.lift_suspension(spiffe_id, _ms(now))
    if lifted is not None:
        peer, attributes = named_by(actor, _attributes(lifted))
        events.Recorder(sink, component="identity").record(
            Activity.SPIFFE_ID_RESTORED,
            "SPIFFE ID suspension lifted",
            now=now,
            spiffe_id=spiffe_id,
            peer_spiffe_id=peer,
            attributes=attributes,
            strict=True,
        )
    return lifted


def _attributes(suspension: Suspension) -> dict[str, events.AttributeValue]:
    return {
        "until": suspension.until,
        "cause": suspension.cause,
        "suspended_by": suspension.by,
    }


def _iso(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def suspension_doc(suspension: Suspension) -> dict[str, Any]:
    """A suspension as the admin API shows it."""
    return {
        "spiffe_id": suspension.spiffe_id,
        "until": _iso(suspension.until),
        "until_ms": suspension.until,
        "cause": suspension.cause,
        "created": _iso(suspension.created),
        "by": suspension.by,
    }


def feed_doc(version: int, suspensions: list[Suspension]) -> dict[str, Any]:
    """What any workload of the trust domain learns from the feed: which IDs, until when
    (ms; None: until lifted). Not why, nor who: least privilege."""
    return {
        "version": version,
        "suspensions": [{"spiffe_id": s.spiffe_id, "until": s.until} for s in suspensions],
    }
