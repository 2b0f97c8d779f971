"""The identity provider over HTTP (Starlette): discovery (RFC 8414, OIDC Discovery),
JWKS, the token endpoint, introspection (RFC 7662), revocation (RFC 7009), userinfo, the
login flow, the admin API and the revocation feed the SDK polls.

Two listeners serve it. The **mTLS** one (``sdk.serve``, the provider's SVID) serves
everything to workloads. The **public** one (server-authenticated TLS) serves what a
browser or a public client needs — discovery, JWKS, authorize and login, the token
endpoint, revocation, userinfo and the admin API (admin users' tokens only) — and its
URL is the issuer. Discovery then lists the mTLS URLs as ``mtls_endpoint_aliases``
(RFC 8705 §5). Tokens issued over the public listener are not certificate-bound: the
services' SDK refuses them; they serve the gateway, userinfo and the admin API.

This module only routes: it parses the form (RFC 6749 §3.2) and the connection's TLS
facts, asks the protocol layer (:meth:`trustmesh.auth.oauth.OAuthServer.respond`,
:mod:`trustmesh.auth.endpoints`), answers, and records the request's event."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2 import OAuth2Error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.auth.admin import AdminAPI
from trustmesh.auth.client_auth import ASSERTION_ALGORITHMS
from trustmesh.auth.core import (
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    OPENID,
    REFRESH_TOKEN,
    TOKEN_EXCHANGE,
    CoreRequest,
    Outcome,
)
from trustmesh.auth.endpoints import userinfo
from trustmesh.auth.gateway_tokens import GatewayTokens
from trustmesh.auth.login import SessionCodec
from trustmesh.auth.oauth import OAuthServer
from trustmesh.auth.pages import LoginPages
from trustmesh.auth.service import ALG, ID_TOKEN_CLAIMS, AuthService
from trustmesh.errors import UnavailableError
from trustmesh.reasons import ANSWERS, Reason
from trustmesh.sdk.tokens import bearer_token

log = logging.getLogger("trustmesh.auth")

MAX_FORM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _BadForm(Exception):
    def __init__(self, description: str) -> None:
        self.description = description


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=_NO_STORE
    )


async def _form(request: Request) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body (RFC 6749 §3.2), strictly."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise _BadForm("the body must be application/x-www-form-urlencoded")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise _BadForm(f"the body must be at most {MAX_FORM_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _BadForm(f"the body must be at most {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError):
        raise _BadForm("the body is not a valid form") from None
    seen: set[str] = set()
    for key, _ in pairs:  # RFC 6749 §3.2: parameters MUST NOT be included more than once
        if key in seen and key not in ("resource", "audience"):
            raise _BadForm(f"parameter {key!r} repeated")
        seen.add(key)
    return pairs


def _tls(request: Request) -> dict[str, Any]:
    """What the listener verified of the connection (``spiffe_id``, the client
    certificate's thumbprint ``client_cert_x5t_s256``)."""
    return (request.scope.get("extensions") or {}).get("tls") or {}


@dataclass(frozen=True)
class AuthURLs:
    """Where the provider listens: mTLS (always) and public (when enabled)."""

    mtls: str
    public: str | None = None

    @property
    def front(self) -> str:
        """The URL clients are told to use first (the issuer's listener)."""
        return self.public or self.mtls


#: Paths served on the public listener (everything else answers 404 there).
PUBLIC_PATHS = frozenset(
    {
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/jwks.json",
        "/oauth2/authorize",
        "/login",
        "/account",
        "/logout",
        "/oauth2/token",
        "/oauth2/revoke",
        "/oauth2/userinfo",
        "/healthz",
    }
)


def metadata(service: AuthService, urls: AuthURLs, server: OAuthServer) -> dict[str, Any]:
    """The authorization server's metadata (RFC 8414 §2, OIDC Discovery §3)."""
    base, mtls = urls.front, urls.mtls
    doc: dict[str, Any] = {
        "issuer": service.settings.issuer,
        "token_endpoint": base + "/oauth2/token",
        "jwks_uri": base + "/jwks.json",
        "introspection_endpoint": mtls + "/oauth2/introspect",  # workloads only
        "revocation_endpoint": base + "/oauth2/revoke",
        "userinfo_endpoint": base + "/oauth2/userinfo",
        "trustmesh_revocation_feed": mtls + "/v1/revocations",
        "authorization_endpoint": base + "/oauth2/authorize",
        "grant_types_supported": [
            CLIENT_CREDENTIALS,
            TOKEN_EXCHANGE,
            AUTHORIZATION_CODE,
            REFRESH_TOKEN,
        ],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": [OPENID],  # a client's own scopes are its registration's
        "claims_supported": list(ID_TOKEN_CLAIMS),  # userinfo's are among them
        "token_endpoint_auth_methods_supported": server.auth_methods("token"),
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_methods_supported": server.auth_methods("introspection"),
        "revocation_endpoint_auth_methods_supported": server.auth_methods("revocation"),
        "tls_client_certificate_bound_access_tokens": True,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
    }
    if urls.public is not None:
        doc["mtls_endpoint_aliases"] = {
            "token_endpoint": mtls + "/oauth2/token",
            "revocation_endpoint": mtls + "/oauth2/revoke",
            "introspection_endpoint": mtls + "/oauth2/introspect",
            "userinfo_endpoint": mtls + "/oauth2/userinfo",
        }
    return doc


def _client_of(core: CoreRequest) -> str | None:
    client = getattr(core, "client", None)
    return client.get_client_id() if client is not None else None


class ProviderRoutes:
    """The provider's own routes on one listener (the login pages and the admin API
    have theirs): each parses, asks the protocol layer, answers and records."""

    def __init__(self, service: AuthService, urls: AuthURLs, server: OAuthServer) -> None:
        self.service, self.urls, self.server = service, urls, server

    async def _respond(self, request: Request, endpoint: str) -> tuple[CoreRequest, Outcome]:
        tls = _tls(request)
        core = CoreRequest(
            "POST",
            str(request.url),
            request.headers,
            await _form(request),
            peer_spiffe_id=tls.get("spiffe_id"),
            peer_thumbprint=tls.get("client_cert_x5t_s256"),
        )
        return core, await self.server.respond(endpoint, core)

    async def token(self, request: Request) -> Response:
        try:
            core, outcome = await self._respond(request, "token")
        except _BadForm as exc:
            return _error(400, "invalid_request", exc.description)
        except UnavailableError as exc:  # no key may sign now: nothing issued, and said so
            reason = exc.reason or Reason.SIGNING_KEY_UNAVAILABLE
            self.service.emit(
                reason, f"token request failed: {exc.detail}", decision=events.Decision.ERROR
            )
            answer = ANSWERS[reason]
            return _error(answer.status, answer.code, "tokens cannot be issued now; try again")
        self._token_event(core, outcome[1])
        return _answer(outcome)

    def _token_event(self, core: CoreRequest, body: Any) -> None:
        if core.issued is None:
            error = (
                body.get("error", "invalid_request")
                if isinstance(body, dict)
                else "invalid_request"
            )
            self.service.emit(
                Reason.CLIENT_AUTH_FAILED if error == "invalid_client" else Reason.TOKEN_REFUSED,
                f"token request refused: {error}",
                decision=events.Decision.DENY,
                peer_spiffe_id=core.peer_spiffe_id,
                client_id=_client_of(core),
            )
            return
        claims = core.issued.claims
        act = claims.get("act")
        actor = act.get("sub") if isinstance(act, dict) else None
        self.service.emit_issued(
            f"access token issued for {', '.join(core.audiences)}"
            + (f" (exchanged by {actor})" if actor else ""),
            client_id=claims["client_id"],
            jti=claims["jti"],
            sub=claims["sub"],
            peer_spiffe_id=core.peer_spiffe_id,
        )

    async def introspect(self, request: Request) -> Response:
        try:
            core, outcome = await self._respond(request, "introspection")
        except _BadForm as exc:
            return _error(400, "invalid_request", exc.description)
        if outcome[0] == 200:
            self.service.emit(
                Reason.TOKEN_INTROSPECTED,
                "token introspected",
                client_id=_client_of(core),
                jti=core.token.claims["jti"] if core.token else None,
                peer_spiffe_id=core.peer_spiffe_id,
            )
        return _answer(outcome)

    async def revoke(self, request: Request) -> Response:
        try:
            _, outcome = await self._respond(request, "revocation")
        except _BadForm as exc:
            return _error(400, "invalid_request", exc.description)
        return _answer(outcome)

    async def discovery(self, _: Request) -> JSONResponse:
        doc = metadata(self.service, self.urls, self.server)
        return JSONResponse(doc, headers={"Cache-Control": "max-age=300"})

    async def jwks(self, _: Request) -> Response:
        # verifiers may cache the set for half the publish delay: a new key is in every
        # cache before it signs
        max_age = max(1, min(300, self.service.settings.publish_delay // 2))
        return Response(
            self.service.ring.jwks,
            media_type="application/jwk-set+json",
            headers={"Cache-Control": f"max-age={max_age}"},
        )

    async def revocation_feed(self, request: Request) -> Response:
        """What was revoked since the caller's cursors (``since``, ``subjects_since``).
        Only for those who verify tokens (:attr:`AuthService.feed_readers`)."""
        peer = _tls(request).get("spiffe_id")
        if peer not in self.service.feed_readers:
            self.service.emit(
                Reason.REVOCATION_FEED_DENIED,
                "revocation feed refused: the caller verifies no tokens",
                decision=events.Decision.DENY,
                peer_spiffe_id=peer,
            )
            return _error(403, "forbidden", "the revocation feed is for token verifiers only")
        cursors = []
        for name in ("since", "subjects_since"):
            value = request.query_params.get(name, "0")
            if not value.isdigit() or len(value) > 18:
                return _error(400, "invalid_request", f"{name} must be a non-negative integer")
            cursors.append(int(value))
        feed = await self.service.revocations.feed(*cursors)
        return JSONResponse(feed, headers=_NO_STORE)

    async def userinfo(self, request: Request) -> Response:
        """OIDC Core §5.3: the user behind an access token."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="trustmesh"', **_NO_STORE},
            )
        user = await userinfo(self.service, token, _tls(request).get("client_cert_x5t_s256"))
        if user is None:
            challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"', **_NO_STORE}
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
        return JSONResponse(
            {"sub": user.user_id, "preferred_username": user.username}, headers=_NO_STORE
        )

    async def health(self, _: Request) -> Response:
        ok = self.service.ring.active is not None
        return JSONResponse(
            {"status": "ok" if ok else "no-signing-key"}, status_code=200 if ok else 503
        )

    def routes(self) -> list[Route]:
        return [
            Route("/.well-known/openid-configuration", self.discovery, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", self.discovery, methods=["GET"]),
            Route("/jwks.json", self.jwks, methods=["GET"]),
            Route("/oauth2/token", self.token, methods=["POST"]),
            Route("/oauth2/introspect", self.introspect, methods=["POST"]),
            Route("/oauth2/revoke", self.revoke, methods=["POST"]),
            Route("/v1/revocations", self.revocation_feed, methods=["GET"]),
            Route("/oauth2/userinfo", self.userinfo, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
        ]


def _answer(outcome: Outcome) -> JSONResponse:
    status, body, headers = outcome
    return JSONResponse(body, status_code=status, headers={**dict(headers), **_NO_STORE})


async def _oauth_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuth2Error)  # noqa: S101 - registered for this type only
    return _error(exc.status_code or 400, exc.error or "invalid_request", exc.description or "")


def auth_app(
    service: AuthService,
    urls: AuthURLs,
    *,
    public: bool = False,
    gateway_tokens: GatewayTokens | None = None,
) -> Starlette:
    """The provider's app for one listener (``public``: the browser-facing subset).
    ``gateway_tokens``: accept the gateway's tokens as subject tokens in token exchange."""
    client_auth_urls = [
        u + path
        for u in (urls.public, urls.mtls)
        if u
        for path in ("/oauth2/token", "/oauth2/introspect", "/oauth2/revoke")
    ]
    server = OAuthServer(service, lambda: client_auth_urls, gateway_tokens=gateway_tokens)
    pages = LoginPages(service, server.flow, SessionCodec(service.seal_key.key))
    routes = [*pages.routes(), *ProviderRoutes(service, urls, server).routes()]
    if public:
        routes = [r for r in routes if r.path in PUBLIC_PATHS]
    return Starlette(
        routes=[*AdminAPI(service).routes(), *routes],
        exception_handlers={OAuth2Error: _oauth_error},
    )
