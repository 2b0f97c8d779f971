"""The browser's side of the provider: the authorization endpoint (RFC 6749 §4.1.1, PKCE
required: RFC 7636), the login form, the account page and logout.

Codes are single-use, live ``CODE_SECONDS`` and are stored hashed
(:mod:`trustmesh.auth.flow_store`); redirect URIs match exactly. A sign-in from before
the user's tokens were revoked (locked, MFA reset, password changed:
:mod:`trustmesh.auth.revocations`) authorizes nothing more: its session and its codes.
A login is counted as failed before its credentials are checked (the lockout), and its
user's revocation state is read before the user, so a user revoked while signing in gets
no session.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.auth import pkce
from trustmesh.auth.core import OPENID
from trustmesh.auth.db import Client, User
from trustmesh.auth.flow_store import CodeRecord, FlowStore, hash_code
from trustmesh.auth.lockout import LockoutPolicy, LoginState, normalize_login
from trustmesh.auth.login import (
    ACCOUNT_PATH,
    CSRF_COOKIE,
    LOGIN_FAILED,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    SessionCodec,
    account_page,
    cookie_header,
    error_page,
    login_csp,
    login_page,
    safe_next,
)
from trustmesh.auth.revocations import SubjectState
from trustmesh.auth.service import AuthService
from trustmesh.errors import UsageError
from trustmesh.reasons import Activity, Reason

__all__ = ["CODE_SECONDS", "LOCKOUT", "LoginPages"]

CODE_SECONDS = 60
LOCKOUT = LockoutPolicy(threshold=5, base_delay=30.0, max_delay=3600.0)
MAX_LOGIN_BODY = 16 * 1024


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def _redirect(redirect_uri: str, params: dict[str, str]) -> Response:
    sep = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(
        redirect_uri + sep + urlencode(params), status_code=303, headers=SECURITY_HEADERS
    )


class LoginPages:
    """The routes of the login flow, over the flow store and the session codec."""

    def __init__(self, service: AuthService, flow: FlowStore, codec: SessionCodec) -> None:
        self.service, self.flow, self.codec = service, flow, codec

    def routes(self) -> list[Route]:
        return [
            Route(ACCOUNT_PATH, self.account, methods=["GET"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/oauth2/authorize", self.authorize, methods=["GET"]),
            Route("/login", self.login_get, methods=["GET"]),
            Route("/login", self.login_post, methods=["POST"]),
        ]

    # -- authorize ---------------------------------------------------------------------------
    def _answer(self, redirect_uri: str, state: str | None, **params: str) -> Response:
        """A redirect back to the client, naming this issuer (RFC 9207) and its state."""
        params["iss"] = self.service.settings.issuer
        if state:
            params["state"] = state
        return _redirect(redirect_uri, params)

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        client = await self.service.client(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri")
        if client is None or not client.redirect_uris:
            return _html(error_page("Unknown client."), 400)
        if not pkce.redirect_uri_matches(redirect_uri, client.redirect_uris):
            return _html(error_page("The redirect URI is not registered for this client."), 400)
        assert redirect_uri is not None  # noqa: S101 - matched
        state = q.get("state")
        if q.get("response_type") != "code":
            return self._answer(redirect_uri, state, error="unsupported_response_type")
        try:
            challenge = pkce.check_challenge(
                q.get("code_challenge"), q.get("code_challenge_method")
            )
        except UsageError:
            return self._answer(redirect_uri, state, error="invalid_request")
        if any(s not in (*client.scopes, OPENID) for s in q.get("scope", "").split()):
            return self._answer(redirect_uri, state, error="invalid_scope")
        session = self.codec.read(request.cookies.get(SESSION_COOKIE), self.service.clock())
        if session is not None and await self.service.revocations.predates(
            session.user_id, session.auth_time
        ):  # signed in before the user's tokens were revoked: sign in again
            session = None
        if session is None:
            target = "/login?" + urlencode(
                {"next": str(request.url.path) + "?" + str(request.url.query)}
            )
            return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        code = await self._new_code(client, session, redirect_uri, challenge, q)
        return self._answer(redirect_uri, state, code=code)

    async def _new_code(
        self, client: Client, session: Session, redirect_uri: str, challenge: str, q: QueryParams
    ) -> str:
        """A new authorization code for the signed-in user (stored hashed)."""
        code = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        now = int(self.service.clock())
        await self.flow.new_code(
            CodeRecord(
                code_hash=hash_code(code),
                client_id=client.client_id,
                user_id=session.user_id,
                username=session.username,
                redirect_uri=redirect_uri,
                scope=q.get("scope", ""),
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
        return code

    # -- login -------------------------------------------------------------------------------
    async def _return_origin(self, next_url: str) -> str | None:
        """The origin the login's redirects end at: the redirect URI of the pending
        authorization request, if registered for its client."""
        query = dict(parse_qsl(urlsplit(next_url).query))
        client = await self.service.client(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri")
        if client is None or not pkce.redirect_uri_matches(redirect_uri, client.redirect_uris):
            return None
        parts = urlsplit(redirect_uri or "")
        return f"{parts.scheme}://{parts.netloc}"

    async def _login_form(
        self, request: Request, message: str | None = None, status: int = 200
    ) -> Response:
        next_url = safe_next(request.query_params.get("next")) or "/oauth2/authorize?"
        csrf = request.cookies.get(CSRF_COOKIE) or self.codec.new_csrf()
        # CSP form-action also governs the redirects after the form is sent (browsers
        # check the whole chain): allow the registered redirect URI's origin, no other.
        origin = await self._return_origin(next_url)
        headers = {"Content-Security-Policy": login_csp(origin)} if origin else None
        response = _html(
            login_page(next_url=next_url, csrf=self.codec.csrf_field(csrf), message=message),
            status,
            headers,
        )
        response.headers.append("Set-Cookie", cookie_header(CSRF_COOKIE, csrf, 3600))
        return response

    async def login_get(self, request: Request) -> Response:
        return await self._login_form(request)

    def _one_time_step(self, user: User, code: str, now: float) -> int | None:
        """The step of ``code`` if it is the user's valid, unused one-time code."""
        secret = crypto.open_sealed(
            user.totp_sealed or b"",
            self.service.seal_key,
            context=b"trustmesh/auth/totp/" + user.user_id.encode(),
        )
        return crypto.verify_totp(secret, code, now, last_step=user.totp_last_step)

    async def _user_and_state(self, login: str) -> tuple[User | None, SubjectState]:
        """The user signing in as ``login`` and its revocation state, the state read
        first: a lock, password change or MFA reset (each changes the user, then revokes
        it) after the read shows in ``revoked_since``; the wait keeps a session from
        being born in the second its user was revoked."""
        store = self.service.store
        user = await store.get_user(login)
        if user is None:
            return None, SubjectState()
        state = await self.service.revocations.before_issuing(user.user_id)
        again = await store.get_user(login)
        if again is None or again.user_id != user.user_id:
            return None, state  # removed meanwhile (or another user took its name)
        return again, state

    async def _signed_in(
        self, user: User | None, form: dict[str, str], attempts: LoginState, now: float
    ) -> list[str] | None:
        """How ``user`` signed in with the form's credentials (its ``amr``), or None: a
        wrong password or one-time code, a locked user, an admin without MFA, a login
        locked out. Every check runs, whatever the first found."""
        password_ok = await asyncio.to_thread(
            crypto.verify_password, user.password_hash if user else None, form.get("password", "")
        )
        otp_ok, step = True, None
        if user is not None and user.mfa_enrolled:
            step = self._one_time_step(user, form.get("otp", ""), now)
            otp_ok = step is not None
        mfa_missing = user is not None and "admin" in user.roles and not user.mfa_enrolled
        if (
            user is None
            or not password_ok
            or not otp_ok
            or user.locked
            or mfa_missing
            or attempts.locked(now)
        ):
            return None
        # check-and-record in one statement: of concurrent logins with one code, one wins;
        # the others fail like any wrong code
        if step is not None and not await self.service.store.use_totp_step(
            user.user_id, user.totp_sealed or b"", step
        ):
            return None
        return ["pwd", "otp", "mfa"] if step is not None else ["pwd"]

    async def login_post(self, request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_LOGIN_BODY:
            return _html(error_page("Request too large."), 413)
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        if not self.codec.csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            return _html(error_page("The form expired; reload the page and try again."), 403)
        login = normalize_login(form.get("username", ""))[:256]
        now = self.service.clock()
        attempts = await self.flow.count_attempt(login, now, LOCKOUT)  # failed, till it isn't
        user, state = await self._user_and_state(login)
        amr = await self._signed_in(user, form, attempts, now)
        if amr is None or user is None:
            return await self._refused(request, login, "login refused")
        cookie = self.codec.issue(user.user_id, user.username, amr, int(self.service.clock()))
        if await self.service.revocations.revoked_since(user.user_id, state):
            # locked, password changed or MFA reset after the user was read: the
            # credentials just checked may be the old ones
            return await self._refused(
                request, login, "login refused: the user was revoked while signing in", user
            )
        await self.flow.clear_attempts(login)
        self.service.emit(
            Reason.LOGIN_SUCCEEDED,
            "login",
            sub=user.user_id,
            src=_source(request),
            attributes={"login": user.username, "amr": " ".join(amr)},
        )
        next_url = safe_next(form.get("next"))
        response = RedirectResponse(next_url or "/", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append(
            "Set-Cookie", cookie_header(SESSION_COOKIE, cookie, SESSION_SECONDS)
        )
        return response

    async def _refused(
        self, request: Request, login: str, message: str, user: User | None = None
    ) -> Response:
        """The login form again, as for any wrong credentials (401), and the event."""
        self.service.emit(
            Reason.LOGIN_FAILED,
            message,
            decision=events.Decision.DENY,
            sub=user.user_id if user is not None else None,
            src=_source(request),
            attributes={"login": login[:128]},
        )
        return await self._login_form(request, LOGIN_FAILED, 401)

    # -- the account -------------------------------------------------------------------------
    async def account(self, request: Request) -> Response:
        """Who is signed in (the provider's own small page: a login flow to try in a
        browser); without a session, the login form, back here afterwards."""
        session = self.codec.read(request.cookies.get(SESSION_COOKIE), self.service.clock())
        if session is None:
            target = "/login?" + urlencode({"next": ACCOUNT_PATH})
            return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        csrf = request.cookies.get(CSRF_COOKIE) or self.codec.new_csrf()
        response = _html(
            account_page(
                username=session.username,
                amr=session.amr,
                auth_time=session.auth_time,
                csrf=self.codec.csrf_field(csrf),
            )
        )
        response.headers.append("Set-Cookie", cookie_header(CSRF_COOKIE, csrf, 3600))
        return response

    async def logout(self, request: Request) -> Response:
        raw = await request.body()
        form = dict(parse_qsl(raw[:MAX_LOGIN_BODY].decode("utf-8", "replace")))
        if not self.codec.csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            return _html(error_page("The form expired; reload the page and try again."), 403)
        session = self.codec.read(request.cookies.get(SESSION_COOKIE), self.service.clock())
        if session is not None:
            self.service.emit(
                Activity.LOGOUT,
                "logout",
                sub=session.user_id,
                attributes={"login": session.username},
            )
        response = RedirectResponse(ACCOUNT_PATH, status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("Set-Cookie", cookie_header(SESSION_COOKIE, "", 0))
        return response


def _source(request: Request) -> events.Endpoint | None:
    """Where a login came from: the address of the connection (the provider's public
    listener faces browsers directly; no forwarded header is believed)."""
    client = request.client
    try:
        return events.Endpoint(ip=str(ipaddress.ip_address(client.host))) if client else None
    except ValueError:  # a unix socket or a test client: no address to record
        return None
