"""Secure service discovery: who is serving where, told only to those allowed to call.

Instances register themselves (their service comes from their verified SVID, never from
what they claim) with a lease; an instance that stops renewing vanishes after its lease.
A caller asking for a service learns its endpoints — each with the SPIFFE ID to expect —
only if the declaration lets the caller call that service; otherwise the answer is the
same ``404`` as for a service that does not exist, so discovery reveals nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from trustmesh.config import TrustmeshConfig
from trustmesh.errors import NotFoundError, PermissionDeniedError, UsageError

LEASE = dt.timedelta(seconds=15)


@dataclass(frozen=True)
class Instance:
    service: str
    spiffe_id: str
    url: str
    registered_at: dt.datetime
    expires_at: dt.datetime
    cert_expires: str | None = None


@dataclass
class Registry:
    config: TrustmeshConfig
    lease: dt.timedelta = LEASE
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)

    def service_of(self, spiffe_id: str) -> str:
        """The declared service a workload SPIFFE ID names, or PermissionDeniedError."""
        prefix = f"spiffe://{self.config.trust_domain}/"
        name = spiffe_id.removeprefix(prefix)
        if not spiffe_id.startswith(prefix) or name not in self.config.services:
            raise PermissionDeniedError(f"{spiffe_id} is not a declared service")
        return name

    def register(
        self, spiffe_id: str, url: str, now: dt.datetime, cert_expires: str | None = None
    ) -> Instance:
        service = self.service_of(spiffe_id)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or parts.port is None:
            raise UsageError("url must be https://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise UsageError("url must name only scheme, host and port")
        key = (service, url)
        previous = self.instances.get(key)
        instance = Instance(
            service,
            spiffe_id,
            url,
            previous.registered_at if previous else now,
            now + self.lease,
            cert_expires,
        )
        self.instances[key] = instance
        return instance

    def restore(self, listed: object, now: dt.datetime) -> int:
        """Take back the leases a snapshot of this registry lists (what the identity
        service wrote before it was stopped or killed): each instance whose lease has
        not ended, of a service still declared, at an address that is still valid, for
        what is left of its lease — an identity service that starts again forgets no
        one who registered, and a dead instance still vanishes when its lease ends.
        How many were taken back."""
        taken = 0
        for entry in listed if isinstance(listed, list) else []:
            try:
                ends = dt.datetime.fromisoformat(str(entry["expires_at"]))
                if ends <= now or entry.get("stale"):
                    continue
                cert = entry.get("cert_expires")
                found = self.register(
                    str(entry["spiffe_id"]),
                    str(entry["url"]),
                    now,
                    cert if isinstance(cert, str) else None,
                )
            except (
                KeyError,
                TypeError,
                ValueError,
                AttributeError,
                UsageError,
                PermissionDeniedError,
            ):
                continue  # not an entry this registry wrote, or no longer declared
            if found.service != entry.get("service"):
                self.instances.pop((found.service, found.url), None)
                continue
            self.instances[(found.service, found.url)] = replace(
                found, expires_at=min(ends, found.expires_at)
            )
            taken += 1
        return taken

    def deregister(self, spiffe_id: str, url: str) -> bool:
        return self.instances.pop((self.service_of(spiffe_id), url), None) is not None

    def may_call(self, caller: str, service: str) -> bool:
        gateway = self.config.gateway
        if gateway is not None and caller == self.config.component_spiffe_id("gateway"):
            return any(r.to == service for r in gateway.routes)  # its routes' targets
        try:
            name = self.service_of(caller)
        except PermissionDeniedError:
            return False
        return any(c.from_ == name and c.to == service for c in self.config.calls)

    def lookup(self, caller: str, service: str, now: dt.datetime) -> list[Instance]:
        """Live endpoints of ``service``, if ``caller`` may call it; NotFoundError if not
        (the same answer as for an unknown service)."""
        if not self.may_call(caller, service):
            raise NotFoundError("no such service")
        return sorted(
            (i for i in self.instances.values() if i.service == service and i.expires_at > now),
            key=lambda i: i.url,
        )

    def expire(self, now: dt.datetime, grace: dt.timedelta = dt.timedelta(0)) -> list[Instance]:
        """Drop instances whose lease ended more than ``grace`` ago; return them."""
        gone = [i for i in self.instances.values() if i.expires_at + grace <= now]
        for instance in gone:
            del self.instances[(instance.service, instance.url)]
        return gone

    def snapshot(self, now: dt.datetime) -> list[dict[str, object]]:
        return [
            {
                "service": i.service,
                "spiffe_id": i.spiffe_id,
                "url": i.url,
                "expires_at": i.expires_at.isoformat(),
                "cert_expires": i.cert_expires,
                "stale": i.expires_at <= now,
            }
            for i in sorted(self.instances.values(), key=lambda i: (i.service, i.url))
        ]
