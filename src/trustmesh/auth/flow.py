"""Authorization code + PKCE (RFC 6749 §4.1, RFC 7636) with OIDC ID tokens, login, and
refresh tokens with rotation — the user side of the identity provider.

Codes are single-use, live ``CODE_SECONDS``, are stored hashed, and remember what they
issued: presenting a code a second time revokes the access token and refresh family it
produced. PKCE (S256) is required of every client; redirect URIs match exactly. A
sign-in from before the user's tokens were revoked (locked, MFA reset, password changed:
:mod:`trustmesh.auth.revocations`) authorizes nothing more: its session and its codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from sqlalchemy import BigInteger, Column, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.auth import pkce
from trustmesh.auth.db import AuthStore, User, metadata
from trustmesh.auth.lockout import LockoutPolicy, LoginState, after_failure, normalize_login
from trustmesh.auth.login import (
    ACCOUNT_PATH,
    CSRF_COOKIE,
    LOGIN_FAILED,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    SessionCodec,
    account_page,
    cookie_header,
    error_page,
    login_csp,
    login_page,
    safe_next,
)
from trustmesh.auth.methods import CLIENT_METHODS
from trustmesh.auth.oauth import _AudienceAndScope, _prefetched
from trustmesh.auth.revocations import SubjectState
from trustmesh.auth.service import AuthService
from trustmesh.errors import StateError, UsageError
from trustmesh.reasons import Activity, Reason

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type
OPENID = "openid"  # the scope every client may ask for: an ID token (OIDC Core §3.1.2.1)
CODE_SECONDS = 60
ID_TOKEN_SECONDS = 300
REFRESH_LIFETIME = 30 * 86400
LOCKOUT = LockoutPolicy(threshold=5, base_delay=30.0, max_delay=3600.0)

codes = Table(
    "auth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("username", String(256), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("nonce", Text),
    Column("code_challenge", String(64), nullable=False),
    Column("auth_time", BigInteger, nullable=False),
    Column("amr", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
    Column("issued_jti", String(64)),
    Column("issued_exp", BigInteger),
    Column("family_id", String(64)),
)

login_attempts = Table(
    "auth_login_attempts",
    metadata,
    Column("login", String(256), primary_key=True),
    Column("failures", BigInteger, nullable=False),
    Column("locked_until", BigInteger, nullable=False),
)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    client_id: str
    user_id: str
    username: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    auth_time: int
    amr: tuple[str, ...]
    expires_at: int
    used_at: int | None
    issued_jti: str | None
    issued_exp: int | None
    family_id: str | None


class FlowStore:
    def __init__(self, store: AuthStore) -> None:
        self.engine = store.engine

    async def new_code(self, record: CodeRecord) -> None:
        async with self.engine.begin() as conn:
            values = {k: v for k, v in record.__dict__.items() if k != "amr"}
            await conn.execute(insert(codes).values(**values, amr=" ".join(record.amr)))

    async def code(self, code: str) -> CodeRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(codes).where(codes.c.code_hash == _hash(code)))
            ).first()
        if row is None:
            return None
        m = dict(row._mapping)
        m["amr"] = tuple(str(m["amr"]).split())
        return CodeRecord(**m)

    async def spend_code(
        self, code_hash: str, now: int, jti: str, exp: int, family: str | None
    ) -> bool:
        """Mark the code used and remember what it issued; False if it was used already."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(codes)
                .where(codes.c.code_hash == code_hash, codes.c.used_at.is_(None))
                .values(used_at=now, issued_jti=jti, issued_exp=exp, family_id=family)
            )
        return result.rowcount == 1

    async def attempts(self, login: str) -> LoginState:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(login_attempts).where(login_attempts.c.login == login))
            ).first()
        return LoginState(int(row.failures), float(row.locked_until)) if row else LoginState()

    async def count_attempt(self, login: str, now: float, policy: LockoutPolicy) -> LoginState:
        """Count a login attempt as failed before its credentials are checked (a success
        clears it: :meth:`clear_attempts`); the state the attempt found. Counted in one
        locked UPDATE: concurrent attempts each count and each finds the ones before it,
        so a burst of guesses is locked out as soon as a sequence would be."""
        found = await self._count(login, now, policy)
        if found is None:  # its first attempt: make the row (a concurrent one may have)
            with contextlib.suppress(IntegrityError):
                async with self.engine.begin() as conn:
                    await conn.execute(
                        insert(login_attempts).values(login=login, failures=0, locked_until=0)
                    )
            found = await self._count(login, now, policy)
        if found is None:
            raise StateError(f"login attempts of {login[:64]!r} vanished while counted")
        return found

    async def _count(self, login: str, now: float, policy: LockoutPolicy) -> LoginState | None:
        table = login_attempts
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(table)
                    .where(table.c.login == login)
                    .values(failures=table.c.failures + 1)
                    .returning(table.c.failures, table.c.locked_until)
                )
            ).first()
            if row is None:
                return None
            found = LoginState(int(row.failures) - 1, float(row.locked_until))
            counted = after_failure(found, now, policy)
            if counted.locked_until != found.locked_until:  # the row stays locked till commit
                await conn.execute(
                    update(table)
                    .where(table.c.login == login)
                    .values(locked_until=int(counted.locked_until))
                )
        return found

    async def clear_attempts(self, login: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(login_attempts)
                .where(login_attempts.c.login == login)
                .values(failures=0, locked_until=0)
            )


# -- grants ------------------------------------------------------------------------------
def _check_user() -> None:
    """A code or refresh token is worth nothing once its user is gone or locked."""
    user = _prefetched.get().user
    if user is None or user.locked:
        raise InvalidGrantError(description="the user is unknown or locked")


def _user_claims() -> dict[str, Any]:
    """RFC 9068 §2.2.3.1: the user's roles (and name), for the services' own checks."""
    user = _prefetched.get().user
    return {"preferred_username": user.username, "roles": list(user.roles)}


class AuthorizationCode(_AudienceAndScope, BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = AUTHORIZATION_CODE
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(CLIENT_METHODS)

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="authorization_code is not allowed")
        self.request.client = client
        record = _prefetched.get().code
        now = self.server.service.clock()
        if record is None or record.client_id != client.get_client_id():
            raise InvalidGrantError(description="invalid authorization code")
        if record.used_at is not None:
            raise InvalidGrantError(description="authorization code already used")
        if now >= record.expires_at:
            raise InvalidGrantError(description="authorization code expired")
        if self.request.form.get("redirect_uri") != record.redirect_uri:
            raise InvalidGrantError(
                description="redirect_uri does not match the authorization request"
            )
        if not pkce.verify_pkce(record.code_challenge, self.request.form.get("code_verifier")):
            raise InvalidGrantError(description="code_verifier does not match (PKCE)")
        _check_user()
        revoked = _prefetched.get().subject_state  # the user's tokens revoked since sign-in
        if revoked is not None and record.auth_time < revoked.before:
            raise InvalidGrantError(description="the sign-in was revoked since")
        self.check_audience_and_scope(
            client.record, client.record.audiences, allow_extra_scope=True
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        record = _prefetched.get().code
        assert record is not None  # noqa: S101 - validated
        return (
            200,
            issue_user_tokens(
                self,
                record.user_id,
                record.username,
                record.scope,
                record.nonce,
                record.auth_time,
                record.amr,
            ),
            self.TOKEN_RESPONSE_HEADER,
        )


class RefreshGrant(_AudienceAndScope, BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = REFRESH_TOKEN
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(CLIENT_METHODS)

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        self.request.client = client
        outcome = _prefetched.get().refresh
        if outcome is not None and outcome.status == "needs-mtls":
            raise InvalidGrantError(
                description="this refresh token's tokens are certificate-bound: refresh over mTLS"
            )
        if outcome is None or outcome.status != "rotated" or outcome.family is None:
            status = outcome.status if outcome else "unknown"
            raise InvalidGrantError(description=f"refresh token {status}")
        if outcome.family.client_id != client.get_client_id():
            raise InvalidGrantError(description="refresh token of another client")
        _check_user()
        self.check_audience_and_scope(
            client.record, client.record.audiences, allow_extra_scope=True
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        outcome = _prefetched.get().refresh
        assert outcome is not None  # noqa: S101 - validated
        assert outcome.family is not None  # noqa: S101 - validated
        family = outcome.family
        record: Any = self.request.client.record
        issued = self.server.service.mint(
            client=record,
            subject=family.subject,
            audience=self.request.audiences,
            scope=family.scope.split(),
            cnf_thumbprint=self.request.peer_thumbprint,
            extra=_user_claims(),  # no amr: a refresh is no login
        )
        self.request.issued = issued
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.claims["exp"] - issued.claims["iat"],
            "refresh_token": outcome.token,
        }
        if family.scope:
            body["scope"] = family.scope
        return 200, body, self.TOKEN_RESPONSE_HEADER


def issue_user_tokens(
    grant: Any,
    user_id: str,
    username: str,
    scope: str,
    nonce: str | None,
    auth_time: int,
    amr: tuple[str, ...],
) -> dict[str, Any]:
    service: AuthService = grant.server.service
    record: Any = grant.request.client.record
    issued = service.mint(
        client=record,
        subject=user_id,
        audience=grant.request.audiences,
        scope=scope.split(),
        cnf_thumbprint=grant.request.peer_thumbprint,
        # RFC 9068 §2.2.1: how the user logged in (the admin APIs ask for "otp")
        extra={**_user_claims(), "auth_time": auth_time, "amr": list(amr)},
    )
    grant.request.issued = issued
    body: dict[str, Any] = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.claims["exp"] - issued.claims["iat"],
        "scope": scope,
    }
    if OPENID in scope.split():
        body["id_token"] = service.id_token(
            client_id=record.client_id,
            subject=user_id,
            username=username,
            nonce=nonce,
            auth_time=auth_time,
            amr=list(amr),
            access_token=issued.token,
        )
    grant.request.wants_refresh = True
    return body


__all__ = [
    "AUTHORIZATION_CODE",
    "OPENID",
    "REFRESH_LIFETIME",
    "REFRESH_TOKEN",
    "AuthorizationCode",
    "FlowStore",
    "RefreshGrant",
    "flow_routes",
]


# -- HTTP: authorize and login -----------------------------------------------------------
def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def flow_routes(service: AuthService, flow: FlowStore, codec: SessionCodec) -> list[Route]:
    def redirect_error(redirect_uri: str, error: str, state: str | None) -> Response:
        params = {"error": error, "iss": service.settings.issuer}
        if state:
            params["state"] = state
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(
            redirect_uri + sep + urlencode(params), status_code=303, headers=SECURITY_HEADERS
        )

    async def authorize(request: Request) -> Response:
        q = request.query_params
        client = await service.client(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri")
        if client is None or not client.redirect_uris:
            return _html(error_page("Unknown client."), 400)
        if not pkce.redirect_uri_matches(redirect_uri, client.redirect_uris):
            return _html(error_page("The redirect URI is not registered for this client."), 400)
        assert redirect_uri is not None  # noqa: S101 - matched
        state = q.get("state")
        if q.get("response_type") != "code":
            return redirect_error(redirect_uri, "unsupported_response_type", state)
        try:
            challenge = pkce.check_challenge(
                q.get("code_challenge"), q.get("code_challenge_method")
            )
        except UsageError:
            return redirect_error(redirect_uri, "invalid_request", state)
        scope = q.get("scope", "")
        if any(s not in (*client.scopes, OPENID) for s in scope.split()):
            return redirect_error(redirect_uri, "invalid_scope", state)
        session = codec.read(request.cookies.get(SESSION_COOKIE), service.clock())
        if session is not None and await service.revocations.predates(
            session.user_id, session.auth_time
        ):  # signed in before the user's tokens were revoked: sign in again
            session = None
        if session is None:
            target = "/login?" + urlencode(
                {"next": str(request.url.path) + "?" + str(request.url.query)}
            )
            return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        code = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        now = int(service.clock())
        await flow.new_code(
            CodeRecord(
                code_hash=_hash(code),
                client_id=client.client_id,
                user_id=session.user_id,
                username=session.username,
                redirect_uri=redirect_uri,
                scope=scope,
                nonce=q.get("nonce"),
                code_challenge=challenge,
                auth_time=session.auth_time,
                amr=session.amr,
                expires_at=now + CODE_SECONDS,
                used_at=None,
                issued_jti=None,
                issued_exp=None,
                family_id=None,
            )
        )
        params = {"code": code, "iss": service.settings.issuer}
        if state:
            params["state"] = state
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(
            redirect_uri + sep + urlencode(params), status_code=303, headers=SECURITY_HEADERS
        )

    async def return_origin(next_url: str) -> str | None:
        """The origin the login's redirects end at: the redirect URI of the pending
        authorization request, if registered for its client."""
        query = dict(parse_qsl(urlsplit(next_url).query))
        client = await service.client(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri")
        if client is None or not pkce.redirect_uri_matches(redirect_uri, client.redirect_uris):
            return None
        parts = urlsplit(redirect_uri or "")
        return f"{parts.scheme}://{parts.netloc}"

    async def login_form(
        request: Request, message: str | None = None, status: int = 200
    ) -> Response:
        next_url = safe_next(request.query_params.get("next")) or "/oauth2/authorize?"
        csrf = request.cookies.get(CSRF_COOKIE) or codec.new_csrf()
        # CSP form-action also governs the redirects after the form is sent (browsers
        # check the whole chain): allow the registered redirect URI's origin, no other.
        origin = await return_origin(next_url)
        headers = {"Content-Security-Policy": login_csp(origin)} if origin else None
        response = _html(
            login_page(next_url=next_url, csrf=codec.csrf_field(csrf), message=message),
            status,
            headers,
        )
        response.headers.append("Set-Cookie", cookie_header(CSRF_COOKIE, csrf, 3600))
        return response

    async def login_get(request: Request) -> Response:
        return await login_form(request)

    def one_time_step(user: User, code: str, now: float) -> int | None:
        """The step of ``code`` if it is the user's valid, unused one-time code."""
        secret = crypto.open_sealed(
            user.totp_sealed or b"",
            service.seal_key,
            context=b"trustmesh/auth/totp/" + user.user_id.encode(),
        )
        return crypto.verify_totp(secret, code, now, last_step=user.totp_last_step)

    async def user_and_state(login: str) -> tuple[User | None, SubjectState]:
        """The user signing in as ``login`` and its revocation state, the state read
        first: a lock, password change or MFA reset (each changes the user, then revokes
        it) after the read shows in ``revoked_since``; the wait keeps a session from
        being born in the second its user was revoked."""
        user = await service.store.get_user(login)
        if user is None:
            return None, SubjectState()
        state = await service.revocations.before_issuing(user.user_id)
        again = await service.store.get_user(login)
        if again is None or again.user_id != user.user_id:
            return None, state  # removed meanwhile (or another user took its name)
        return again, state

    async def login_post(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > 16 * 1024:
            return _html(error_page("Request too large."), 413)
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        if not codec.csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            return _html(error_page("The form expired; reload the page and try again."), 403)
        next_url = safe_next(form.get("next"))
        login = normalize_login(form.get("username", ""))[:256]
        now = service.clock()
        attempts = await flow.count_attempt(login, now, LOCKOUT)  # a failure until it succeeds
        user, state = await user_and_state(login)
        password_ok = await asyncio.to_thread(
            crypto.verify_password, user.password_hash if user else None, form.get("password", "")
        )
        otp_ok, step = True, None
        if user is not None and user.mfa_enrolled:
            step = one_time_step(user, form.get("otp", ""), now)
            otp_ok = step is not None
        mfa_missing = user is not None and "admin" in user.roles and not user.mfa_enrolled
        ok = (
            user is not None
            and password_ok
            and otp_ok
            and not user.locked
            and not mfa_missing
            and not attempts.locked(now)
        )
        if ok and user is not None and step is not None:
            # check-and-record in one statement: of concurrent logins with one code, one
            # wins; the others fail like any wrong code
            ok = await service.store.use_totp_step(user.user_id, user.totp_sealed or b"", step)
        if not ok or user is None:
            service.emit(
                Reason.LOGIN_FAILED,
                "login refused",
                decision=events.Decision.DENY,
                attributes={"login": login[:128]},
            )
            return await login_form(request, LOGIN_FAILED, 401)
        amr = ["pwd", "otp", "mfa"] if step is not None else ["pwd"]
        cookie = codec.issue(user.user_id, user.username, amr, int(service.clock()))
        if await service.revocations.revoked_since(user.user_id, state):
            # locked, password changed or MFA reset after the user was read: the
            # credentials just checked may be the old ones
            service.emit(
                Reason.LOGIN_FAILED,
                "login refused: the user was revoked while signing in",
                decision=events.Decision.DENY,
                sub=user.user_id,
                attributes={"login": login[:128]},
            )
            return await login_form(request, LOGIN_FAILED, 401)
        await flow.clear_attempts(login)
        service.emit(
            Reason.LOGIN_SUCCEEDED,
            "login",
            sub=user.user_id,
            attributes={"login": user.username, "amr": " ".join(amr)},
        )
        response = RedirectResponse(next_url or "/", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append(
            "Set-Cookie", cookie_header(SESSION_COOKIE, cookie, SESSION_SECONDS)
        )
        return response

    async def account(request: Request) -> Response:
        """Who is signed in (the provider's own small page: a login flow to try in a
        browser); without a session, the login form, back here afterwards."""
        session = codec.read(request.cookies.get(SESSION_COOKIE), service.clock())
        if session is None:
            target = "/login?" + urlencode({"next": ACCOUNT_PATH})
            return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        csrf = request.cookies.get(CSRF_COOKIE) or codec.new_csrf()
        response = _html(
            account_page(
                username=session.username,
                amr=session.amr,
                auth_time=session.auth_time,
                csrf=codec.csrf_field(csrf),
            )
        )
        response.headers.append("Set-Cookie", cookie_header(CSRF_COOKIE, csrf, 3600))
        return response

    async def logout(request: Request) -> Response:
        raw = await request.body()
        form = dict(parse_qsl(raw[: 16 * 1024].decode("utf-8", "replace")))
        if not codec.csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            return _html(error_page("The form expired; reload the page and try again."), 403)
        session = codec.read(request.cookies.get(SESSION_COOKIE), service.clock())
        if session is not None:
            service.emit(
                Activity.LOGOUT,
                "logout",
                sub=session.user_id,
                attributes={"login": session.username},
            )
        response = RedirectResponse(ACCOUNT_PATH, status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("Set-Cookie", cookie_header(SESSION_COOKIE, "", 0))
        return response

    return [
        Route(ACCOUNT_PATH, account, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/oauth2/authorize", authorize, methods=["GET"]),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
    ]
