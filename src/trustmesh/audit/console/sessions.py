"""Who is signed in to the console, and the sign-ins under way: both kept in the
collector's memory only (a restart signs everyone out), both bounded.

- A **session** is named by a random 256-bit cookie value (``__Host-`` cookie: Secure,
  HttpOnly, SameSite=Lax, Path=/); only its SHA-256 is kept as the key. It ends
  ``ttl`` after the sign-in, or ``idle`` after its last use, whichever is first. Each
  carries its own CSRF token (the synchronizer pattern), sent with every form that
  changes something and compared in constant time.
- A **pending sign-in** holds the OAuth ``state``, the OIDC ``nonce`` and the PKCE
  ``code_verifier`` of one authorization request (RFC 6749 §10.12, RFC 7636), under a
  cookie of its own; it is used once and lasts ten minutes.

When either table is full the oldest entry goes first: a flood of sign-in attempts
cannot grow memory, only end the oldest unfinished ones.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["Admin", "Pending", "PendingSignIns", "Session", "Sessions"]

#: A pending sign-in's life (seconds): time to type a password and a code.
PENDING_SECONDS = 600.0


@dataclass(frozen=True)
class Admin:
    """The signed-in user, as the provider's ID token named them."""

    sub: str
    username: str
    amr: tuple[str, ...]
    auth_time: int


@dataclass(frozen=True)
class Session:
    admin: Admin
    csrf: str
    started: float
    seen: float


@dataclass(frozen=True)
class Pending:
    state: str
    nonce: str
    verifier: str
    started: float


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


class Sessions:
    def __init__(
        self,
        ttl: float,
        idle: float,
        *,
        clock: Callable[[], float] = time.time,
        capacity: int = 10_000,
    ) -> None:
        self.ttl, self.idle, self._clock, self._capacity = ttl, idle, clock, capacity
        self._held: OrderedDict[str, Session] = OrderedDict()

    def open(self, admin: Admin) -> tuple[str, Session]:
        """A new session for ``admin``: the cookie value, and the session."""
        now = self._clock()
        cookie = secrets.token_urlsafe(32)
        session = Session(admin, secrets.token_urlsafe(32), now, now)
        while len(self._held) >= self._capacity:
            self._held.popitem(last=False)
        self._held[_key(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session the cookie names (its use noted), or None."""
        if not cookie or len(cookie) > 256:
            return None
        key = _key(cookie)
        session = self._held.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.started >= self.ttl or now - session.seen >= self.idle:
            del self._held[key]
            return None
        session = replace(session, seen=now)
        self._held[key] = session
        self._held.move_to_end(key)
        return session

    def close(self, cookie: str | None) -> Session | None:
        """End the session the cookie names; it, if there was one."""
        if not cookie:
            return None
        return self._held.pop(_key(cookie), None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            session.csrf.encode(), token.encode("utf-8", "replace")
        )

    def __len__(self) -> int:
        return len(self._held)


class PendingSignIns:
    def __init__(self, *, clock: Callable[[], float] = time.time, capacity: int = 10_000) -> None:
        self._clock, self._capacity = clock, capacity
        self._held: OrderedDict[str, Pending] = OrderedDict()

    def begin(self) -> tuple[str, Pending]:
        """A new sign-in: its cookie value, and its state, nonce and PKCE verifier."""
        cookie = secrets.token_urlsafe(32)
        pending = Pending(
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),  # 64 characters of the unreserved set (RFC 7636 §4.1)
            self._clock(),
        )
        while len(self._held) >= self._capacity:
            self._held.popitem(last=False)
        self._held[_key(cookie)] = pending
        return cookie, pending

    def take(self, cookie: str | None, state: str | None) -> Pending | None:
        """The sign-in the cookie names, once, if ``state`` is its own and it is recent;
        any answer (right or wrong) ends it."""
        if not cookie or len(cookie) > 256:
            return None
        pending = self._held.pop(_key(cookie), None)
        if pending is None or not state or self._clock() - pending.started >= PENDING_SECONDS:
            return None
        if not hmac.compare_digest(pending.state.encode(), state.encode("utf-8", "replace")):
            return None
        return pending
