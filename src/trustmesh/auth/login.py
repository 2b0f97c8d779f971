"""The user side of the provider: login sessions, the login page, CSRF protection.

- Session: a cookie ``__Host-tm_session`` (Secure, HttpOnly, SameSite=Lax, Path=/), a
  JSON payload with an HMAC-SHA256 over it (key derived from the sealing key), holding
  the user id, name, ``amr`` and ``auth_time``; it expires after ``SESSION_SECONDS``.
- CSRF: double submit — a random ``__Host-tm_csrf`` cookie, and a form field that must
  be its HMAC (an attacker's page can neither read the cookie nor forge the MAC).
- Pages: no caching, no framing, a strict CSP; identical answers for unknown users, wrong
  passwords, locked accounts and wrong one-time codes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import html
import json
import os
from dataclasses import dataclass
from typing import Any

SESSION_COOKIE = "__Host-tm_session"
CSRF_COOKIE = "__Host-tm_csrf"
SESSION_SECONDS = 8 * 3600
LOGIN_FAILED = "Invalid username, password or one-time code."


def login_csp(return_origin: str | None = None) -> str:
    """The pages' Content Security Policy; a login form may also end its redirect chain
    at the origin of the client's registered redirect URI."""
    form_action = "'self'" + (f" {return_origin}" if return_origin else "")
    return (
        f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": login_csp(),
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    user_id: str
    username: str
    amr: tuple[str, ...]
    auth_time: int
    expires_at: int


class SessionCodec:
    """Signs and reads session cookies and CSRF tokens with a key of its own."""

    def __init__(self, master: bytes) -> None:
        self._key = hmac.new(master, b"trustmesh/auth/login-session", hashlib.sha256).digest()
        self._csrf = hmac.new(master, b"trustmesh/auth/login-csrf", hashlib.sha256).digest()

    def issue(self, user_id: str, username: str, amr: list[str], now: int) -> str:
        payload = {
            "uid": user_id,
            "name": username,
            "amr": amr,
            "auth_time": now,
            "exp": now + SESSION_SECONDS,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{mac}"

    def read(self, cookie: str | None, now: float) -> Session | None:
        if not cookie or cookie.count(".") != 1 or len(cookie) > 4096:
            return None
        body, mac = cookie.split(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            payload: dict[str, Any] = json.loads(_unb64(body))
            session = Session(
                str(payload["uid"]),
                str(payload["name"]),
                tuple(str(a) for a in payload["amr"]),
                int(payload["auth_time"]),
                int(payload["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return session if now < session.expires_at else None

    def new_csrf(self) -> str:
        return _b64(os.urandom(24))

    def csrf_field(self, cookie: str) -> str:
        return _b64(hmac.new(self._csrf, cookie.encode(), hashlib.sha256).digest())

    def csrf_ok(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field:
            return False
        return hmac.compare_digest(self.csrf_field(cookie), field)


def cookie_header(name: str, value: str, max_age: int) -> str:
    return f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax"


def login_page(*, next_url: str, csrf: str, message: str | None = None) -> str:
    """The login form. Every dynamic value is escaped."""
    note = f'<p role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · trustmesh</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto}}
label{{display:block;margin:.6rem 0 .2rem}}input{{width:100%;padding:.4rem}}
button{{margin-top:1rem;padding:.5rem 1rem}}[role=alert]{{color:#a00}}</style></head>
<body><h1>Sign in</h1>{note}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(next_url)}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<label for="otp">One-time code (if you set one up)</label>
<input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{{6}}">
<button type="submit">Sign in</button>
</form></body></html>
"""


def error_page(message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error</title></head>'
        f"<body><h1>Request refused</h1><p>{html.escape(message)}</p></body></html>"
    )


ACCOUNT_PATH = "/account"


def account_page(*, username: str, amr: tuple[str, ...], auth_time: int, csrf: str) -> str:
    """Who is signed in here, and a way out. Every dynamic value is escaped."""
    when = _dt.datetime.fromtimestamp(auth_time, _dt.UTC).isoformat(timespec="seconds")
    how = "password and one-time code" if "otp" in amr else "password"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Account · trustmesh</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto}}
button{{margin-top:1rem;padding:.5rem 1rem}}</style></head>
<body><h1>Account</h1>
<p id="who">Signed in as {html.escape(username)}</p>
<p>With {html.escape(how)}, at {html.escape(when)}.</p>
<form method="post" action="/logout">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<button type="submit">Sign out</button>
</form></body></html>
"""


def safe_next(value: str | None) -> str | None:
    """Only a return to this server's authorization endpoint or the account page (no
    open redirect)."""
    if value == ACCOUNT_PATH:
        return value
    if not value or not value.startswith("/oauth2/authorize?") or "\\" in value:
        return None
    if any(ch in value for ch in "\r\n\t"):
        return None
    return value
