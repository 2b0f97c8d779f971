"""The identity service's core: which SPIFFE IDs a process may hold, and issuing them.
A suspended SPIFFE ID (:mod:`trustmesh.identity.suspensions`) is held by no one while
its suspension lasts: no SVID is issued for it, new or renewed, and the refusal is an
event (``suspended-spiffe-id``).

No sockets here: the Workload API adapter (:mod:`trustmesh.identity.workload`) attests
the peer and calls in; every decision is emitted as an event.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from trustmesh import crypto, events
from trustmesh.errors import AttestationError, InvalidTokenError, PermissionDeniedError, UsageError
from trustmesh.identity import admin, rotation
from trustmesh.identity.admin import DEFAULT_JOIN_TTL, ServiceSettings, hash_join_token, utcnow
from trustmesh.identity.attestation import ProcessInfo, process_alive
from trustmesh.identity.ca import CertificateAuthority
from trustmesh.identity.models import IssuedSVID, RegistrationEntry, Suspension
from trustmesh.identity.store import IdentityStore
from trustmesh.reasons import Activity, Code, Reason
from trustmesh.spiffeid import parse_spiffe_id

Clock = Callable[[], dt.datetime]

#: Renewed SVIDs are pushed when this fraction of their lifetime has passed: before
#: half-life, so a workload always holds a certificate with more than half its life left
#: to fall back on if the identity service is briefly away.
RENEW_FRACTION = 0.4


@dataclass(frozen=True)
class Identity:
    spiffe_id: str
    ttl: dt.timedelta


@dataclass(frozen=True, repr=False)
class X509SVID:
    spiffe_id: str
    chain: tuple[x509.Certificate, ...]  # leaf first
    key: crypto.PrivateKey
    issued_at: dt.datetime

    def __repr__(self) -> str:
        return f"X509SVID({self.spiffe_id}, not_after={self.not_after.isoformat()})"

    @property
    def not_after(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def renew_at(self) -> dt.datetime:
        return self.issued_at + (self.not_after - self.issued_at) * RENEW_FRACTION


class IdentityService:
    def __init__(
        self,
        settings: ServiceSettings,
        store: IdentityStore,
        ca: CertificateAuthority,
        sink: events.EventSink,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ca = ca
        self.sink = sink
        self.clock = clock
        self._entries: tuple[RegistrationEntry, ...] = ()
        self._suspended: dict[str, Suspension] = {}
        self._suspensions_version = -1
        self._issued: dict[str, X509SVID] = {}
        self.recorder = events.Recorder(sink, component="identity", clock=clock)
        self._ticks = 0
        self._store_version = -1
        self.refresh_entries()

    # -- state -----------------------------------------------------------------------------
    def refresh_entries(self, *, written: bool = False) -> bool:
        """Reload entries and suspensions if another process changed the store, or this
        one did (``written``: its own writes do not move PRAGMA data_version). True if
        changed."""
        version = self.store.data_version()
        if version == self._store_version and not written:
            return False
        self._store_version = version
        entries = tuple(self.store.list_entries())
        changed = entries != self._entries
        self._entries = entries
        return self._refresh_suspensions() or changed

    def _refresh_suspensions(self) -> bool:
        version = self.store.suspensions_version()
        if version == self._suspensions_version:
            return False
        self._suspensions_version = version
        now = int(self.clock().timestamp() * 1000)
        self._suspended = {s.spiffe_id: s for s in self.store.suspensions(now)}
        return True

    def next_suspension_end(self) -> dt.datetime | None:
        """When the first suspension in force ends by itself (None: none will): a stream
        wakes then, and sends the SVID it withheld."""
        now = int(self.clock().timestamp() * 1000)
        ends = [s.until for s in self._suspended.values() if s.until is not None and s.until > now]
        return dt.datetime.fromtimestamp(min(ends) / 1000, dt.UTC) if ends else None

    def suspended(self, spiffe_id: str) -> Suspension | None:
        """``spiffe_id``'s suspension in force now (as last read from the store), or None."""
        found = self._suspended.get(spiffe_id)
        if found is None or not found.active(int(self.clock().timestamp() * 1000)):
            return None
        return found

    def prune_bindings(self) -> int:
        """Forget join-token bindings of processes that have exited."""
        return self.store.prune_bindings(process_alive)

    def tick(self) -> bool:
        """Periodic upkeep: store changes, CA rotation. True when streams must re-send."""
        self.flush_issued()
        self._ticks += 1
        if self._ticks % 30 == 0:
            self.prune_bindings()
        changed = self.refresh_entries()
        return self.ca.tick(self.clock()) or changed

    def flush_issued(self) -> None:
        """Record the last SVID issued per SPIFFE ID (public facts only) in the store."""
        issued, self._issued = self._issued, {}
        for svid in issued.values():
            leaf = svid.chain[0]
            self.store.record_svid(
                IssuedSVID(
                    spiffe_id=svid.spiffe_id,
                    serial=format(leaf.serial_number, "x"),
                    not_before=leaf.not_valid_before_utc,
                    not_after=leaf.not_valid_after_utc,
                    chain_pem="".join(crypto.cert_pem(c) for c in svid.chain),
                    issued_at=svid.issued_at,
                )
            )

    # -- attestation -----------------------------------------------------------------------
    def identities(self, proc: ProcessInfo) -> list[Identity]:
        """Every SPIFFE ID ``proc`` may hold: entries whose selectors it all presents,
        and join tokens it redeemed, but no suspended one (each refusal is an event).
        Raises AttestationError (and emits) when none."""
        self.refresh_entries()  # an entry registered a moment ago counts at once
        selectors = proc.selectors()
        found: dict[str, dt.timedelta] = {}
        for entry in self._entries:
            if entry.matches(selectors):
                ttl = min(entry.ttl or self.settings.svid_ttl, self.settings.max_svid_ttl)
                found[entry.spiffe_id] = min(found.get(entry.spiffe_id, ttl), ttl)
        for binding in self.store.bindings_for(proc.pid, proc.start_time):
            found.setdefault(binding.spiffe_id, self.settings.svid_ttl)
        if not found:
            self._emit_refusal(proc, Reason.NO_MATCHING_ENTRY, "no registration entry matches")
            raise AttestationError("no registration entry matches", reason=Reason.NO_MATCHING_ENTRY)
        for spiffe_id in [sid for sid in found if self.suspended(sid)]:
            del found[spiffe_id]
            self._emit_refusal(
                proc, Reason.SPIFFE_ID_SUSPENDED, "the SPIFFE ID is suspended", spiffe_id=spiffe_id
            )
        if not found:
            raise AttestationError(
                "every SPIFFE ID of the workload is suspended", reason=Reason.SPIFFE_ID_SUSPENDED
            )
        return [Identity(sid, ttl) for sid, ttl in sorted(found.items())]

    # -- issuance --------------------------------------------------------------------------
    def issue_x509(self, identity: Identity, proc: ProcessInfo) -> X509SVID:
        now = self.clock()
        cert, key = crypto.issue_x509_svid(
            identity.spiffe_id, self.ca.issuer, now=now, ttl=identity.ttl
        )
        svid = X509SVID(identity.spiffe_id, (cert, *self.ca.chain_tail), key, now)
        # Public facts for `svid show`, written in batches by flush_issued() (off the
        # per-call path: one SQLite write per second, not one per SVID).
        self._issued[identity.spiffe_id] = svid
        self.recorder.record(
            Activity.SVID_ISSUED,
            "X.509-SVID issued",
            spiffe_id=identity.spiffe_id,
            attributes={
                "pid": proc.pid,
                "serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
        )
        return svid

    def issue_jwt(self, spiffe_id: str, audience: list[str]) -> str:
        if not audience or any(not a for a in audience):
            raise UsageError("audience is required")
        now = self.clock()
        ttl = min(self.settings.jwt_svid_ttl, self.settings.max_svid_ttl)
        generation = self.ca.active
        claims: dict[str, Any] = {
            "sub": spiffe_id,
            "aud": audience,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": secrets.token_urlsafe(16),
        }
        token = crypto.sign_jwt(claims, generation.jwt_key, kid=generation.jwt_kid)
        self._emit(
            events.EventClass.ENTITY_MANAGEMENT,
            1,
            "Create",
            events.Decision.ALLOW,
            Activity.SVID_ISSUED,
            "JWT-SVID issued",
            spiffe_id=spiffe_id,
            jti=claims["jti"],
            attributes={"audience": " ".join(audience)},
        )
        return token

    def validate_jwt(self, token: str, audience: str) -> tuple[str, dict[str, Any]]:
        """Validate a JWT-SVID of this trust domain for ``audience`` (JWT-SVID §3, §4)."""
        if not audience or not token:
            raise UsageError("audience and svid are required")
        try:
            expect = crypto.Expect(audience=audience, required=("exp", "aud", "sub"))
            claims = crypto.verify_jwt(
                token, self.ca.jwt_public_keys, expect, now=self.clock().timestamp()
            )
            sub = claims.get("sub")
            if not isinstance(sub, str):
                raise InvalidTokenError("sub missing", reason=Reason.TOKEN_MALFORMED)
            td, path = parse_spiffe_id(sub)
        except UsageError:
            raise InvalidTokenError(
                "sub is not a SPIFFE ID", reason=Reason.TOKEN_MALFORMED
            ) from None
        except InvalidTokenError as exc:
            self._emit(
                events.EventClass.AUTHENTICATION,
                1,
                "Logon",
                events.Decision.DENY,
                exc.reason or Reason.TOKEN_MALFORMED,
                "JWT-SVID rejected",
                attributes={"audience": audience},
            )
            raise
        if td != self.settings.trust_domain or not path:
            raise InvalidTokenError(
                "sub is not a workload of this trust domain", reason=Reason.TOKEN_MALFORMED
            )
        return sub, claims

    # -- join tokens -----------------------------------------------------------------------
    def create_join_token(self, spiffe_id: str, ttl: dt.timedelta = DEFAULT_JOIN_TTL) -> str:
        return admin.create_join_token(
            self.store, self.settings, spiffe_id, ttl, self.sink, now=self.clock()
        )

    def redeem_join_token(self, token: str, proc: ProcessInfo) -> str:
        try:
            spiffe_id = self.store.redeem_join_token(
                hash_join_token(token), now=self.clock(), pid=proc.pid, start_time=proc.start_time
            )
        except PermissionDeniedError as exc:
            self._emit_refusal(proc, exc.reason or Reason.JOIN_TOKEN_INVALID, exc.detail)
            raise
        self._emit(
            events.EventClass.AUTHENTICATION,
            1,
            "Logon",
            events.Decision.ALLOW,
            Reason.ATTESTED,
            "join token redeemed",
            spiffe_id=spiffe_id,
            attributes={"pid": proc.pid, "uid": proc.uid, "exe_sha256": proc.exe_sha256},
        )
        return spiffe_id

    # -- registration entries --------------------------------------------------------------
    def register(
        self, spiffe_id: str, selectors: list[str], ttl: dt.timedelta | None = None
    ) -> RegistrationEntry:
        entry = admin.register_entry(
            self.store, self.settings, spiffe_id, selectors, ttl, self.sink
        )
        self.refresh_entries(written=True)
        return entry

    def report_ca_actions(self, actions: tuple[rotation.Action, ...]) -> None:
        """One event per CA lifecycle step (prepared, activated, retired, renewed)."""
        for action in actions:
            attrs: dict[str, events.AttributeValue]
            match action:
                case rotation.Prepare(activate_at=when):
                    reason, message, attrs = (
                        Activity.CA_PREPARED,
                        "next CA published",
                        {"activate_at": when.isoformat()},
                    )
                case rotation.Activate(generation=gen):
                    reason, message, attrs = (
                        Activity.CA_ACTIVATED,
                        "CA activated",
                        {"generation": gen},
                    )
                case rotation.Retire(generation=gen):
                    reason, message, attrs = (
                        Activity.CA_RETIRED,
                        "CA retired from the bundle",
                        {"generation": gen},
                    )
                case rotation.RenewSigningCA(generation=gen):
                    reason, message, attrs = (
                        Activity.CA_RENEWED,
                        "signing CA renewed",
                        {"generation": gen},
                    )
                case _:
                    reason, message, attrs = Activity.CA_PREPARED, "CA created", {}
            self._emit(
                events.EventClass.ENTITY_MANAGEMENT,
                3,
                "Update",
                events.Decision.ALLOW,
                reason,
                message,
                attributes=attrs,
            )

    # -- events ------------------------------------------------------------------------------
    def _emit_refusal(
        self, proc: ProcessInfo, reason: Code, message: str, *, spiffe_id: str | None = None
    ) -> None:
        self._emit(
            events.EventClass.AUTHENTICATION,
            1,
            "Logon",
            events.Decision.DENY,
            reason,
            f"workload refused: {message}",
            spiffe_id=spiffe_id,
            attributes={
                "pid": proc.pid,
                "uid": proc.uid,
                "gid": proc.gid,
                "exe_path": proc.exe_path,
                "exe_sha256": proc.exe_sha256,
            },
        )

    def emit_attestation_failure(self, reason: Code, message: str) -> None:
        self._emit(
            events.EventClass.AUTHENTICATION,
            1,
            "Logon",
            events.Decision.DENY,
            reason,
            f"workload refused: {message}",
        )

    def _emit(
        self,
        cls: events.EventClass,
        activity_id: int,
        activity_name: str,
        decision: events.Decision,
        reason: Code,
        message: str,
        **fields: Any,
    ) -> None:
        self.recorder.record(
            reason, message, decision=decision, shape=(cls, activity_id, activity_name), **fields
        )
