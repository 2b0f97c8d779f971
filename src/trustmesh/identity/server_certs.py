"""TLS server certificates from the workload CA, for the servers the components connect
to that are not workloads: the shared PostgreSQL and Redis (``sslmode=verify-full``,
``rediss://``). A component checks such a server against the trust bundle it already
holds and the host name it dialled, and presents its own X.509-SVID.

The requester keeps its key: it sends a certificate signing request, whose signature
proves it holds the key; the names come from the request's fields, never from the CSR.
The certificate is serverAuth only and has no URI SAN, so it is no SVID: no workload
accepts it as an identity, and no server accepts it as a client. It is chained to the
active signing CA and never outlives it (``identity.ca_ttl``: a week by default, so the
certificate is often shorter than asked, which the answer says); it is renewed by asking
again, well before ``not_after`` (a daily job).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from trustmesh import crypto, events
from trustmesh.errors import CryptoError, UsageError
from trustmesh.identity.ca import CertificateAuthority
from trustmesh.platform.admin import Actor, named_by
from trustmesh.reasons import Activity

DEFAULT_TTL = dt.timedelta(days=30)
MAX_TTL = dt.timedelta(days=90)
MIN_TTL = dt.timedelta(hours=1)
MAX_NAMES = 16
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class IssuedServerCert:
    chain_pem: str  # leaf, then the signing CA
    bundle_pem: str  # every published root: what a client trusts
    serial: str
    names: tuple[str, ...]
    not_after: dt.datetime
    until_ca_expiry: bool  # shorter than asked: it ends with the signing CA


def server_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> tuple[str, ...]:
    """The names a server certificate may carry: host names (lower-case labels, no
    wildcard) and IP addresses, at least one and at most ``MAX_NAMES``, each once."""
    names: list[str] = []
    for name in dns_names:
        host = name.rstrip(".")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
            raise UsageError(
                f"dns name {name!r}: expected a host name of lower-case letters, digits and "
                "inner hyphens (no wildcard)"
            )
        names.append(host)
    for address in ip_addresses:
        try:
            names.append(str(ipaddress.ip_address(address)))
        except ValueError:
            raise UsageError(f"ip address {address!r} is not an IP address") from None
    if not names:
        raise UsageError("a server certificate needs at least one dns name or ip address")
    if len(names) > MAX_NAMES:
        raise UsageError(f"at most {MAX_NAMES} names on one server certificate")
    if len(set(names)) != len(names):
        raise UsageError("a name is given twice")
    return tuple(names)


def issue(
    ca: CertificateAuthority,
    csr_pem: bytes,
    names: tuple[str, ...],
    ttl: dt.timedelta | None,
    sink: events.EventSink,
    *,
    now: dt.datetime,
    actor: Actor | None = None,
) -> IssuedServerCert:
    """Sign ``csr_pem``'s key for ``names`` (from :func:`server_names`) for ``ttl``
    (``DEFAULT_TTL`` when None; within ``MIN_TTL`` .. ``MAX_TTL``); an event names the
    certificate and who asked."""
    ttl = DEFAULT_TTL if ttl is None else ttl
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise UsageError(
            f"ttl {int(ttl.total_seconds())} s is outside {int(MIN_TTL.total_seconds())} s .. "
            f"{int(MAX_TTL.total_seconds())} s"
        )
    try:
        public = crypto.csr_public_key(csr_pem)
    except CryptoError as exc:
        raise UsageError(f"csr: {exc.detail}") from None
    issuer = ca.issuer
    cert = crypto.server_certificate_for(public, names, issuer.cert, issuer.key, now=now, ttl=ttl)
    serial = f"{cert.serial_number:x}"
    peer, attributes = named_by(
        actor,
        {
            "serial": serial,
            "names": " ".join(names),
            "not_after": cert.not_valid_after_utc.isoformat(),
        },
    )
    events.Recorder(sink, component="identity").record(
        Activity.SERVER_CERT_ISSUED,
        "server certificate issued",
        now=now,
        peer_spiffe_id=peer,
        attributes=attributes,
        strict=True,
    )
    return IssuedServerCert(
        chain_pem="".join(crypto.cert_pem(c) for c in (cert, *ca.chain_tail)),
        bundle_pem="".join(crypto.cert_pem(c) for c in ca.x509_roots),
        serial=serial,
        names=names,
        not_after=cert.not_valid_after_utc,
        until_ca_expiry=cert.not_valid_after_utc < now + ttl - crypto.BACKDATE,
    )
