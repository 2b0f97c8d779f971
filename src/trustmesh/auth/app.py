"""The identity provider over HTTP (Starlette): discovery (RFC 8414, OIDC Discovery),
JWKS, the token endpoint, introspection (RFC 7662), revocation (RFC 7009), userinfo, the
login flow, the admin API and the revocation feed the SDK polls.

Two listeners serve it. The **mTLS** one (``sdk.serve``, the provider's SVID) serves
everything to workloads. The **public** one (server-authenticated TLS) serves what a
browser or a public client needs — discovery, JWKS, authorize and login, the token
endpoint, revocation, userinfo and the admin API (admin users' tokens only) — and its
URL is the issuer. Discovery then lists the mTLS URLs as ``mtls_endpoint_aliases``
(RFC 8705 §5). Tokens issued over the public listener are not certificate-bound: the
services' SDK refuses them; they serve the gateway, userinfo and the admin API."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from authlib.oauth2 import OAuth2Error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.auth.admin import admin_routes
from trustmesh.auth.flow import (
    AUTHORIZATION_CODE,
    OPENID,
    REFRESH_LIFETIME,
    REFRESH_TOKEN,
    AuthorizationCode,
    FlowStore,
    RefreshGrant,
    flow_routes,
)
from trustmesh.auth.gateway_tokens import GatewayTokens
from trustmesh.auth.login import SessionCodec
from trustmesh.auth.methods import CLIENT_METHODS
from trustmesh.auth.oauth import (
    ASSERTION_ALGORITHMS,
    CLIENT_CREDENTIALS,
    TOKEN_EXCHANGE,
    CoreRequest,
    OAuthClient,
    OAuthServer,
    Prefetched,
    RefreshRecord,
    TokenRecord,
)
from trustmesh.auth.revocations import LiveToken
from trustmesh.auth.service import ALG, ID_TOKEN_CLAIMS, AuthService
from trustmesh.errors import InvalidTokenError, UnavailableError
from trustmesh.reasons import Activity, Reason
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


def _client_ids(form: list[tuple[str, str]], authorization: str | None) -> set[str]:
    """Every client the request could authenticate as: client_id, the Basic user, or the
    (not yet verified) subject of a client assertion."""
    ids = {v for k, v in form if k == "client_id" and v}
    if authorization and authorization[:6].lower() == "basic ":
        try:
            user = base64.b64decode(authorization[6:], validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        if user:
            ids.add(unquote(user))
    assertion = next((v for k, v in form if k == "client_assertion"), None)
    if assertion and assertion.count(".") == 2:
        try:
            payload = assertion.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
                ids.add(claims["sub"])
        except (binascii.Error, ValueError, UnicodeDecodeError):
            pass
    return {i for i in ids if len(i) <= 128}


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
    server = OAuthServer(service, lambda: client_auth_urls)
    server.register_grant(AuthorizationCode)
    server.register_grant(RefreshGrant)
    flow = FlowStore(service.store)
    codec = SessionCodec(service.seal_key.key)

    revocations = service.revocations

    async def flow_prefetch(
        grant: str,
        client_id: str,
        form: list[tuple[str, str]],
        prefetched: Prefetched,
        core: CoreRequest,
    ) -> None:
        """What a code or refresh grant reads and spends before Authlib runs, for the
        client the request authenticated as: a code's record and whether it was used
        before (whatever it issued is then revoked), a refresh token rotated (reused: its
        family revoked), and the user's revocation state — read before the user, so a
        revocation after it shows in :meth:`revoked_since`."""
        now = int(service.clock())
        if grant == AUTHORIZATION_CODE:
            code = next((v for k, v in form if k == "code"), "")
            record = await flow.code(code) if code else None
            if record is not None and record.client_id != client_id:
                record = None  # another client's code: refused, and it revokes nothing
            prefetched.code = record
            user_id = record.user_id if record is not None else None
            if user_id is not None:
                prefetched.subject_state = await revocations.before_issuing(user_id)
                prefetched.user = await service.store.get_user_by_id(user_id)
            if record is not None and record.used_at is not None:
                # a code used twice: whatever it issued is revoked (RFC 6749 §4.1.2)
                if record.issued_jti and record.issued_exp:
                    issued = LiveToken(
                        record.issued_jti, record.client_id, record.user_id, record.issued_exp
                    )
                    await revocations.token(issued, "code-reused")
                if record.family_id:
                    await revocations.family(record.family_id, "code-reused")
                service.emit(
                    Activity.TOKEN_REVOKED,
                    "authorization code reused: its tokens are revoked",
                    decision=events.Decision.DENY,
                    client_id=record.client_id,
                    sub=record.user_id,
                )
        elif grant == REFRESH_TOKEN:
            token = next((v for k, v in form if k == "refresh_token"), "")
            if not token:
                return
            # another client's token is unknown to this one: refused, and it revokes nothing
            prefetched.refresh = outcome = await service.store.rotate_refresh(
                token, client_id, now, over_mtls=core.peer_thumbprint is not None
            )
            if outcome.family is not None:
                subject = outcome.family.subject
                prefetched.subject_state = await revocations.before_issuing(subject)
                prefetched.user = await service.store.get_user_by_id(subject)
            if outcome.status == "reused" and outcome.family is not None:
                service.emit(
                    Activity.TOKEN_REVOKED,
                    "refresh token reused: the family is revoked",
                    decision=events.Decision.DENY,
                    client_id=client_id,
                    sub=outcome.family.subject,
                )
                # and every access token it issued (OAuth 2.0 Security BCP §4.14.2)
                await revocations.family(outcome.family.family_id, "refresh-token-reused")

    async def flow_after(
        core: CoreRequest, prefetched: Prefetched, status: int, body: Any
    ) -> tuple[int, Any]:
        """Record the access token a code or refresh grant issued in its family. A user
        revoked meanwhile or a code spent twice leaves nothing alive (400
        invalid_grant). A family revoked while it refreshed (its token replayed at the
        same time) revokes this token too; the answer stands, as it would have had it
        left a moment sooner: of concurrent refreshes one wins, and its tokens die with
        the family."""
        if core.issued is None or prefetched.user is None:
            return status, body
        claims = core.issued.claims
        issued = LiveToken(claims["jti"], claims["client_id"], claims["sub"], claims["exp"])
        now = int(service.clock())
        refreshed, record = prefetched.refresh, prefetched.code
        cause = None
        if refreshed is not None and refreshed.family is not None:
            family_id = refreshed.family.family_id
            if not await revocations.store.record_family_token(family_id, issued):
                await revocations.family(family_id, "family-revoked")
                return status, body
        elif getattr(core, "wants_refresh", False):
            refresh, family = await service.store.start_refresh_family(
                claims["client_id"],
                claims["sub"],
                str(claims.get("scope", "")),
                now,
                REFRESH_LIFETIME,
                bound="cnf" in claims,  # refreshed only where its tokens can stay bound
            )
            family_id = family.family_id
            body["refresh_token"] = refresh
            await revocations.store.record_family_token(family_id, issued)
            if record is not None and not await flow.spend_code(
                record.code_hash, now, claims["jti"], claims["exp"], family_id
            ):  # lost a race with another use of the same code: nothing it issued survives
                cause = "code-reused"
        else:
            return status, body
        if cause is None and await revocations.revoked_since(
            issued.subject, prefetched.subject_state
        ):
            cause = "user-revoked"  # locked, MFA reset, password changed — just now
        if cause is None:
            return status, body
        await revocations.family(family_id, cause)
        core.issued = None
        why = "authorization code already used" if cause == "code-reused" else "grant revoked"
        return 400, {"error": "invalid_grant", "error_description": why}

    def metadata() -> dict[str, Any]:
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

    async def discovery(_: Request) -> JSONResponse:
        return JSONResponse(metadata(), headers={"Cache-Control": "max-age=300"})

    async def jwks(_: Request) -> Response:
        # verifiers may cache the set for half the publish delay: a new key is in every
        # cache before it signs
        max_age = max(1, min(300, service.settings.publish_delay // 2))
        return Response(
            service.ring.jwks,
            media_type="application/jwk-set+json",
            headers={"Cache-Control": f"max-age={max_age}"},
        )

    async def authenticate_first(core: CoreRequest, prefetched: Prefetched) -> str | None:
        """The client a code or refresh grant request authenticates as, checked before
        the grant spends or revokes anything (a stolen refresh token without its client's
        credentials rotates nothing; a replayed assertion revokes nothing); None if it
        does not (the grant then answers its error). The assertion it spends is marked
        used now: ``prefetched.new_assertions`` keeps it only if it was used before."""
        try:
            client: OAuthClient = server.run(
                core, prefetched, lambda r: server.authenticate_client(r, CLIENT_METHODS)
            )
        except OAuth2Error:
            return None
        spent, prefetched.new_assertions = prefetched.new_assertions, []
        for key, expires in spent:
            if not await service.store.use_assertion(key, expires):
                prefetched.new_assertions.append((key, expires))
                return None
        return str(client.get_client_id())

    async def prefetch(form: list[tuple[str, str]], request: Request) -> Prefetched:
        prefetched = Prefetched()
        for client_id in _client_ids(form, request.headers.get("authorization")):
            prefetched.clients[client_id] = await service.client(client_id)
        return prefetched

    async def access_claims(token: str, endpoint: str) -> dict[str, Any] | None:
        try:
            return service.verify_own(token)
        except InvalidTokenError:
            if endpoint == "token" and gateway_tokens is not None:
                # a subject token the gateway signed (RFC 8693 only)
                try:
                    return await gateway_tokens.verify(token)
                except (InvalidTokenError, UnavailableError):
                    return None
        return None

    async def prefetch_token(
        token: str, endpoint: str, hint: str | None, prefetched: Prefetched
    ) -> None:
        """The token an endpoint is asked about: an access token (a subject token at
        the token endpoint), or — to revoke — a refresh token; the hint only says which
        to look for first (RFC 7009 §2.1)."""
        lookups = (
            ["access_token", "refresh_token"] if endpoint == "revocation" else ["access_token"]
        )
        if hint == "refresh_token":
            lookups.reverse()
        for kind in lookups:
            if kind == "refresh_token":
                family = await service.store.family_of(token)
                if family is not None:
                    prefetched.refresh_token = RefreshRecord(family)
                    return
                continue
            claims = await access_claims(token, endpoint)
            if claims is not None:
                prefetched.token = TokenRecord(claims, await revocations.is_revoked(claims))
                return

    async def run(request: Request, endpoint: str) -> tuple[CoreRequest, Prefetched, Response]:
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        form = await _form(request)
        prefetched = await prefetch(form, request)
        field = "token" if endpoint != "token" else "subject_token"
        token = next((v for k, v in form if k == field), None)
        if token:
            hint = next((v for k, v in form if k == "token_type_hint"), None)
            await prefetch_token(token, endpoint, hint, prefetched)
        core = CoreRequest(
            "POST",
            str(request.url),
            request.headers,
            form,
            peer_spiffe_id=tls.get("spiffe_id"),
            peer_thumbprint=tls.get("client_cert_x5t_s256"),
        )
        if endpoint == "token":
            grant = next((v for k, v in form if k == "grant_type"), "")
            if grant in (AUTHORIZATION_CODE, REFRESH_TOKEN):
                client_id = await authenticate_first(core, prefetched)
                if prefetched.new_assertions:  # spent, and found replayed
                    return (
                        core,
                        prefetched,
                        _error(401, "invalid_client", "client assertion replayed"),
                    )
                if client_id is not None:
                    await flow_prefetch(grant, client_id, form, prefetched, core)
            status, body, headers = server.run(core, prefetched, server.create_token_response)
            status, body = await flow_after(core, prefetched, status, body)
        else:
            status, body, headers = server.run(
                core, prefetched, lambda r: server.create_endpoint_response(endpoint, r)
            )
        for key, expires in prefetched.new_assertions:  # replay: refuse what was decided
            if not await service.store.use_assertion(key, expires):
                core.issued = None
                return core, prefetched, _error(401, "invalid_client", "client assertion replayed")
        if isinstance(body, dict) and body.get("error") == "invalid_client":
            status = 401  # RFC 6749 §5.2: the client failed to authenticate
        response = JSONResponse(body, status_code=status, headers={**dict(headers), **_NO_STORE})
        return core, prefetched, response

    def client_of(core: CoreRequest) -> str | None:
        client = getattr(core, "client", None)
        return client.get_client_id() if client is not None else None

    async def token_endpoint(request: Request) -> Response:
        try:
            core, _, response = await run(request, "token")
        except _BadForm as exc:
            return _error(400, "invalid_request", exc.description)
        if core.issued is not None:
            claims = core.issued.claims
            actor = (
                claims.get("act", {}).get("sub") if isinstance(claims.get("act"), dict) else None
            )
            service.emit_issued(
                f"access token issued for {', '.join(core.audiences)}"
                + (f" (exchanged by {actor})" if actor else ""),
                client_id=claims["client_id"],
                jti=claims["jti"],
                sub=claims["sub"],
                peer_spiffe_id=core.peer_spiffe_id,
            )
        else:
            error = json.loads(bytes(response.body)).get("error", "invalid_request")
            service.emit(
                Reason.CLIENT_AUTH_FAILED if error == "invalid_client" else Reason.TOKEN_REFUSED,
                f"token request refused: {error}",
                decision=events.Decision.DENY,
                peer_spiffe_id=core.peer_spiffe_id,
                client_id=client_of(core),
            )
        return response

    async def introspect(request: Request) -> Response:
        try:
            core, prefetched, response = await run(request, "introspection")
        except _BadForm as exc:
            return _error(400, "invalid_request", exc.description)
        if response.status_code == 200:
            service.emit(
                Reason.TOKEN_INTROSPECTED,
                "token introspected",
                client_id=client_of(core),
                jti=prefetched.token.claims["jti"] if prefetched.token else None,
                peer_spiffe_id=core.peer_spiffe_id,
            )
        return response

    async def revoke(request: Request) -> Response:
        try:
            core, prefetched, response = await run(request, "revocation")
        except _BadForm as exc:
            return _error(400, "invalid_request", exc.description)
        # what Authlib decided to revoke, only if the request stands (a replayed
        # assertion is refused after Authlib returns)
        for record in prefetched.revoke if response.status_code == 200 else ():
            if isinstance(record, RefreshRecord):  # its family, and what it issued
                await revocations.family(
                    record.family.family_id,
                    "refresh-token-revoked",
                    peer_spiffe_id=core.peer_spiffe_id,
                )
                continue
            claims = record.claims
            revoked = LiveToken(
                claims["jti"], claims["client_id"], str(claims.get("sub", "")), int(claims["exp"])
            )
            await revocations.token(revoked, "revoked", peer_spiffe_id=core.peer_spiffe_id)
        return response

    async def revocation_feed(request: Request) -> Response:
        """What was revoked since the caller's cursors: token ids (``since``) and
        subjects (``subjects_since``), each a sequence of its own. Only for those who
        verify tokens (:attr:`AuthService.feed_readers`)."""
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        peer = tls.get("spiffe_id")
        if peer not in service.feed_readers:
            service.emit(
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
        since, subjects_since = cursors
        now = int(service.clock())
        rows = await service.store.revocations_since(since, now)
        if await service.store.last_revocation_seq() < since:  # the store was reset
            rows, since = await service.store.revocations_since(0, now), 0
        subjects = await revocations.store.subjects_since(subjects_since, now)
        if await revocations.store.last_subject_seq() < subjects_since:
            subjects, subjects_since = await revocations.store.subjects_since(0, now), 0
        return JSONResponse(
            {
                "cursor": rows[-1].seq if rows else since,
                "revoked": [{"jti": r.jti, "exp": r.expires_at} for r in rows],
                "subjects_cursor": subjects[-1].seq if subjects else subjects_since,
                "subjects": [
                    {"sub": r.subject, "before": r.before, "exp": r.expires_at} for r in subjects
                ],
            },
            headers=_NO_STORE,
        )

    async def userinfo(request: Request) -> Response:
        """OIDC Core §5.3: the user behind an access token (a certificate-bound one only
        over the connection it is bound to)."""
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"', **_NO_STORE}
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="trustmesh"', **_NO_STORE},
            )
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        try:
            claims = service.verify_own(token)
        except InvalidTokenError:
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
        cnf = claims.get("cnf")  # a bound token only over the connection it is bound to
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        user = await service.store.get_user_by_id(str(claims["sub"]))
        if (
            (cnf is not None and (bound is None or bound != tls.get("client_cert_x5t_s256")))
            or await revocations.is_revoked(claims)
            or user is None
            or user.locked
        ):
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
        return JSONResponse(
            {"sub": user.user_id, "preferred_username": user.username}, headers=_NO_STORE
        )

    async def health(_: Request) -> Response:
        ok = service.ring.active is not None
        return JSONResponse(
            {"status": "ok" if ok else "no-signing-key"}, status_code=200 if ok else 503
        )

    async def oauth_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, OAuth2Error)  # noqa: S101 - registered for this type only
        return _error(exc.status_code or 400, exc.error or "invalid_request", exc.description or "")

    routes = [
        *flow_routes(service, flow, codec),
        Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", discovery, methods=["GET"]),
        Route("/jwks.json", jwks, methods=["GET"]),
        Route("/oauth2/token", token_endpoint, methods=["POST"]),
        Route("/oauth2/introspect", introspect, methods=["POST"]),
        Route("/oauth2/revoke", revoke, methods=["POST"]),
        Route("/v1/revocations", revocation_feed, methods=["GET"]),
        Route("/oauth2/userinfo", userinfo, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    if public:
        routes = [r for r in routes if r.path in PUBLIC_PATHS]
    return Starlette(
        routes=[*admin_routes(service), *routes],
        exception_handlers={OAuth2Error: oauth_error},
    )
