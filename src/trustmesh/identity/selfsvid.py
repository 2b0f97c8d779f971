"""The identity service's own SVID: being the CA, it issues its own (no Workload API)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from trustmesh import crypto
from trustmesh.identity.ca import CertificateAuthority
from trustmesh.identity.service import RENEW_FRACTION, Clock
from trustmesh.sdk.x509source import X509Context


class CASource:
    """An SVID source (see ``sdk.x509source.SVIDSource``) fed straight from the CA,
    renewed before half-life and whenever the CA changes."""

    def __init__(
        self, ca: CertificateAuthority, spiffe_id: str, ttl: dt.timedelta, clock: Clock
    ) -> None:
        self.ca = ca
        self.spiffe_id = spiffe_id
        self.ttl = ttl
        self.clock = clock
        self._subscribers: list[Callable[[X509Context], None]] = []
        self._context: X509Context | None = None
        self._ca_version = -1
        self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)

    @property
    def context(self) -> X509Context:
        if self._context is None:
            self.refresh()
        return self._issued()

    def _issued(self) -> X509Context:
        if self._context is None:
            raise RuntimeError("no SVID issued yet")
        return self._context

    def subscribe(self, callback: Callable[[X509Context], None]) -> None:
        self._subscribers.append(callback)

    async def start(self, timeout: float = 30.0) -> X509Context:
        return self.context

    async def close(self) -> None:
        return None

    def refresh(self) -> bool:
        """Re-issue if due or if the CA changed. True when a new SVID was issued."""
        now = self.clock()
        if self._ca_version == self.ca.version and now < self._renew_at:
            return False
        cert, key = crypto.issue_x509_svid(self.spiffe_id, self.ca.issuer, now=now, ttl=self.ttl)
        self._context = X509Context(
            self.spiffe_id, (cert, *self.ca.chain_tail), key, self.ca.x509_roots
        )
        self._ca_version = self.ca.version
        self._renew_at = now + (cert.not_valid_after_utc - now) * RENEW_FRACTION
        for callback in list(self._subscribers):
            callback(self._context)
        return True
