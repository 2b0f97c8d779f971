"""The identity service's admin API (``/admin/v1``), served over mTLS beside discovery:
registration entries, one-time join tokens and suspended SPIFFE IDs.

``GET /admin/v1/entries``, ``POST /admin/v1/entries`` {"spiffe_id", "selectors", "ttl"?
(seconds)}, ``DELETE /admin/v1/entries/{id}``, ``POST /admin/v1/join-tokens``
{"spiffe_id", "ttl"? (seconds)}, ``GET /admin/v1/svids/last?spiffe_id=…`` (the last
X.509-SVID issued for that ID: its public facts and chain, never a key).

``GET /admin/v1/suspensions``, ``POST /admin/v1/suspensions`` {"spiffe_id", "seconds"?
(at most 30 days; none: until lifted), "cause"?} (``201``; the control plane's own IDs,
``spiffe://<td>/trustmesh/…``, are refused ``403``), ``DELETE
/admin/v1/suspensions?spiffe_id=…`` (``200`` {"lifted": true|false}): see
:mod:`trustmesh.identity.suspensions`. These three are also open to the audit collector
(``spiffe://<td>/trustmesh/audit``) taking an automated response — nothing else is.

Two kinds of caller, as at the identity provider's admin API:

- the **operator**: the SPIFFE ID ``spiffe://<td>/trustmesh/operator`` in the verified
  peer certificate;
- a workload acting for an **admin user** (a console, say): a bearer access token from
  the identity provider addressed to this service (``aud`` holds
  ``spiffe://<td>/trustmesh/identity``), bound to the caller's certificate, not revoked,
  with ``admin`` in ``roles`` and ``otp`` in ``amr`` (a login with a one-time code). The
  token is checked as every service checks tokens — JWKS, issuer, audience, binding,
  the revocation feed — through the provider's public protocol, never its internals.

Anyone else gets 403 (401 for a token that does not verify), and every request, allowed
or refused, is an event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import (
    InvalidTokenError,
    NotFoundError,
    UnavailableError,
    UsageError,
)
from trustmesh.identity import admin, server_certs, suspensions
from trustmesh.identity.admin import ServiceSettings, utcnow
from trustmesh.identity.ca import CertificateAuthority
from trustmesh.identity.models import IssuedSVID, RegistrationEntry
from trustmesh.identity.service import Clock
from trustmesh.identity.store import IdentityStore
from trustmesh.platform.admin import (
    RESPONDER,
    Actor,
    Authenticate,
    Handler,
    Refused,
    json_object,
    peer_spiffe_id,
    record_read,
)
from trustmesh.platform.admin import guarded as admin_guarded
from trustmesh.sdk.oauth import ProviderTrust
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.tokens import TokenVerifier, VerifiedToken, bearer_token
from trustmesh.spiffeid import parse_spiffe_id

log = logging.getLogger("trustmesh.identity")

MAX_BODY = 64 * 1024


class AdminTokens:
    """Checks admin users' tokens against the identity provider, found through
    ``locate()`` (its mTLS URL, or None while it is not running). Set up on first use:
    the provider starts after this service."""

    def __init__(
        self,
        config: TrustmeshConfig,
        tls: Callable[[], RotatingTLS | None],
        locate: Callable[[], str | None],
    ) -> None:
        self.config = config
        self._tls = tls
        self._locate = locate
        self._verifier: TokenVerifier | None = None
        self._trust: ProviderTrust | None = None
        self._lock = asyncio.Lock()

    async def verifier(self) -> TokenVerifier:
        async with self._lock:
            if self._verifier is not None:
                return self._verifier
            url, tls = self._locate(), self._tls()
            if url is None or tls is None:
                raise UnavailableError("the identity provider is not running")
            trust = await ProviderTrust.declared(tls, url, self.config)
            self._trust = trust
            self._verifier = TokenVerifier(
                issuers={trust.auth.issuer},
                audience=self.config.component_spiffe_id("identity"),
                jwks=trust.jwks,
                revoked=trust.revoked,
                leeway=self.config.auth.token_leeway.total_seconds(),
            )
            return self._verifier

    async def check(self, token: str, peer_thumbprint: str | None) -> VerifiedToken:
        verifier = await self.verifier()
        return await verifier.verify(token, peer_thumbprint=peer_thumbprint)

    async def close(self) -> None:
        if self._trust is not None:
            await self._trust.close()


def _entry_doc(entry: RegistrationEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "selectors": sorted(entry.selectors),
        "ttl": int(entry.ttl.total_seconds()) if entry.ttl else None,
        "created_at": entry.created_at.isoformat(),
    }


async def _json_object(request: Request) -> dict[str, Any]:
    return json_object(await request.body(), MAX_BODY)


def _svid_doc(svid: IssuedSVID) -> dict[str, Any]:
    return {
        "spiffe_id": svid.spiffe_id,
        "serial": svid.serial,
        "not_before": svid.not_before.isoformat(),
        "not_after": svid.not_after.isoformat(),
        "issued_at": svid.issued_at.isoformat(),
        "chain_pem": svid.chain_pem,
    }


def _ttl(value: object, name: str) -> dt.timedelta | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{name}: expected a positive number of seconds")
    return dt.timedelta(seconds=value)


class IdentityAdmin:
    """The admin API's routes: each guarded (the operator or an admin user; a refusal is
    an event), a read an event naming who asked, a change one through
    :mod:`trustmesh.identity.admin`. ``changed`` is called after every write (the
    Workload API streams re-send); ``last_svid`` finds the last SVID issued for a SPIFFE
    ID."""

    def __init__(
        self,
        config: TrustmeshConfig,
        store: IdentityStore,
        settings: ServiceSettings,
        sink: events.EventSink,
        tokens: AdminTokens,
        changed: Callable[[], None],
        last_svid: Callable[[str], IssuedSVID | None],
        ca: CertificateAuthority,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.store, self.settings, self.sink, self.tokens = store, settings, sink, tokens
        self.ca = ca
        self.changed, self.last_svid, self.clock = changed, last_svid, clock
        self.operator = config.component_spiffe_id("operator")
        self.responder = config.component_spiffe_id("audit")
        self.recorder = events.Recorder(sink, component="identity")

    def routes(self) -> list[Route]:
        guarded = self._guarded
        entries = "/admin/v1/entries"
        return [
            Route("/admin/v1/svids/last", guarded("show-svid", self.show_svid), methods=["GET"]),
            Route(entries, guarded("list-entries", self.list_entries), methods=["GET"]),
            Route(entries, guarded("add-entry", self.add_entry), methods=["POST"]),
            Route(
                entries + "/{entry_id}",
                guarded("remove-entry", self.remove_entry),
                methods=["DELETE"],
            ),
            Route(
                "/admin/v1/join-tokens",
                guarded("create-join-token", self.join_token),
                methods=["POST"],
            ),
            Route(
                "/admin/v1/server-certificates",
                guarded("issue-server-cert", self.server_certificate),
                methods=["POST"],
            ),
            *self._suspension_routes(),
        ]

    def _suspension_routes(self) -> list[Route]:
        """The routes an automated response calls: the audit collector may, too."""
        where = "/admin/v1/suspensions"

        def guarded(action: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            return self._guarded(action, handler, self.actor_or_responder)

        return [
            Route(where, guarded("list-suspensions", self.list_suspensions), methods=["GET"]),
            Route(where, guarded("suspend", self.suspend), methods=["POST"]),
            Route(where, guarded("lift-suspension", self.lift_suspension), methods=["DELETE"]),
        ]

    def _guarded(
        self, action: str, handler: Handler, who: Authenticate | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        return admin_guarded(action, who or self.actor_of, handler, self.recorder)

    async def actor_or_responder(self, request: Request) -> Actor:
        """The audit collector (named ``audit``), or whoever :meth:`actor_of` admits."""
        peer = peer_spiffe_id(request)
        if peer == self.responder:
            return Actor(peer, RESPONDER)
        return await self.actor_of(request)

    async def actor_of(self, request: Request) -> Actor:
        """The operator (by its SVID), or an admin user (by a token); else :class:`Refused`."""
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        peer = tls.get("spiffe_id")
        if peer == self.operator:
            return Actor(peer)
        bearer = bearer_token(request.headers.get("authorization"))
        if bearer is None:
            raise Refused(403, "forbidden", "neither the operator nor an admin user's token")
        try:
            token = await self.tokens.check(bearer, tls.get("client_cert_x5t_s256"))
        except InvalidTokenError as exc:
            raise Refused(401, "invalid_token", f"token refused: {exc.detail}") from None
        except UnavailableError as exc:
            raise Refused(503, "unavailable", exc.detail) from None
        return Actor.user(peer, _admin_user(token))

    async def list_entries(self, _: Request, actor: Actor) -> Response:
        entries = self.store.list_entries()
        record_read(self.recorder, "list-entries", actor)
        return JSONResponse([_entry_doc(e) for e in entries])

    async def add_entry(self, request: Request, actor: Actor) -> Response:
        doc = _fields(await _json_object(request), "spiffe_id", "selectors", "ttl")
        selectors = doc.get("selectors")
        if not isinstance(selectors, list) or not all(isinstance(s, str) for s in selectors):
            raise UsageError("selectors: expected a list of strings such as unix:uid:1000")
        spiffe_id = _spiffe_id(doc)
        ttl = _ttl(doc.get("ttl"), "ttl")
        entry = admin.register_entry(
            self.store, self.settings, spiffe_id, selectors, ttl, self.sink, actor=actor
        )
        self.changed()
        return JSONResponse(_entry_doc(entry), status_code=201)

    async def remove_entry(self, request: Request, actor: Actor) -> Response:
        entry_id = request.path_params["entry_id"]
        entry = admin.remove_entry(self.store, entry_id, self.sink, actor=actor)
        self.changed()
        return JSONResponse(_entry_doc(entry))

    async def join_token(self, request: Request, actor: Actor) -> Response:
        doc = _fields(await _json_object(request), "spiffe_id", "ttl")
        spiffe_id = _spiffe_id(doc)
        ttl = _ttl(doc.get("ttl"), "ttl") or admin.DEFAULT_JOIN_TTL
        token = admin.create_join_token(
            self.store, self.settings, spiffe_id, ttl, self.sink, actor=actor
        )
        return JSONResponse(
            {"token": token, "spiffe_id": spiffe_id, "ttl": int(ttl.total_seconds())},
            status_code=201,
            headers={"Cache-Control": "no-store"},  # shown once; only its hash is stored
        )

    async def server_certificate(self, request: Request, actor: Actor) -> Response:
        """A TLS server certificate for a database or cache the components connect to
        (:mod:`trustmesh.identity.server_certs`): ``{"csr", "dns_names", "ip_addresses",
        "ttl"}``."""
        doc = _fields(await _json_object(request), "csr", "dns_names", "ip_addresses", "ttl")
        csr = doc.get("csr")
        if not isinstance(csr, str):
            raise UsageError("csr: expected a PEM certificate signing request")
        lists = {key: doc.get(key, []) for key in ("dns_names", "ip_addresses")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{key}: expected a list of strings")
        names = server_certs.server_names(lists["dns_names"], lists["ip_addresses"])
        issued = server_certs.issue(
            self.ca,
            csr.encode("utf-8", "replace"),
            names,
            _ttl(doc.get("ttl"), "ttl"),
            self.sink,
            now=self.clock(),
            actor=actor,
        )
        body = {
            "chain_pem": issued.chain_pem,
            "bundle_pem": issued.bundle_pem,
            "serial": issued.serial,
            "names": list(issued.names),
            "not_after": issued.not_after.isoformat(),
            "until_ca_expiry": issued.until_ca_expiry,
        }
        return JSONResponse(body, status_code=201)

    async def show_svid(self, request: Request, actor: Actor) -> Response:
        spiffe_id = request.query_params.get("spiffe_id", "")
        parse_spiffe_id(spiffe_id)
        svid = self.last_svid(spiffe_id)
        record_read(self.recorder, "show-svid", actor)
        if svid is None:
            raise NotFoundError(f"no SVID has been issued for {spiffe_id}")
        return JSONResponse(_svid_doc(svid))

    # -- suspended SPIFFE IDs -------------------------------------------------------------
    async def list_suspensions(self, _: Request, actor: Actor) -> Response:
        found = self.store.suspensions(int(self.clock().timestamp() * 1000))
        record_read(self.recorder, "list-suspensions", actor)
        return JSONResponse({"suspensions": [suspensions.suspension_doc(s) for s in found]})

    async def suspend(self, request: Request, actor: Actor) -> Response:
        doc = _fields(await _json_object(request), "spiffe_id", "seconds", "cause")
        made = suspensions.suspend(
            self.store,
            self.settings.trust_domain,
            doc.get("spiffe_id"),
            doc.get("seconds"),
            doc.get("cause"),
            self.sink,
            actor=actor,
            now=self.clock(),
        )
        self.changed()  # streams of the suspended ID stop at once
        return JSONResponse(suspensions.suspension_doc(made), status_code=201)

    async def lift_suspension(self, request: Request, actor: Actor) -> Response:
        spiffe_id = request.query_params.get("spiffe_id")
        lifted = suspensions.lift(
            self.store,
            self.settings.trust_domain,
            spiffe_id,
            self.sink,
            actor=actor,
            now=self.clock(),
        )
        self.changed()
        return JSONResponse({"spiffe_id": spiffe_id, "lifted": lifted is not None})


def _admin_user(token: VerifiedToken) -> str:
    """The name of the admin user ``token`` (verified) speaks for: ``admin`` in its roles
    and a login with a one-time code (``otp`` in ``amr``); else :class:`Refused` (403)."""
    roles = token.claims.get("roles")
    if not isinstance(roles, list) or "admin" not in roles:
        raise Refused(403, "forbidden", "not an admin user", token.subject)
    amr = token.claims.get("amr")
    if not isinstance(amr, list) or "otp" not in amr:
        raise Refused(
            403, "mfa_required", "admin actions need a login with a one-time code", token.subject
        )
    return str(token.claims.get("preferred_username") or token.subject)


def _fields(doc: dict[str, Any], *known: str) -> dict[str, Any]:
    """``doc``, if it holds no field but ``known``; else :class:`UsageError` naming one."""
    unknown = set(doc) - set(known)
    if unknown:
        raise UsageError(f"unknown field {sorted(unknown)[0]!r}")
    return doc


def _spiffe_id(doc: dict[str, Any]) -> str:
    spiffe_id = doc.get("spiffe_id")
    if not isinstance(spiffe_id, str):
        raise UsageError("spiffe_id: expected a SPIFFE ID")
    return spiffe_id
