"""Who is signed in to the console, and the sign-ins under way, both bounded.

Sessions are kept in memory and, where the collector gives a file (``path``: the
collector's ``<state>/audit/console-sessions.db``, 0600), in SQLite too: a restarted
collector finds its admins' sessions there, each with what is left of its lifetime, and
a session ended (signed out, expired) is gone from both. Pending sign-ins live in
memory only (ten minutes at most: a restart asks the admin to sign in again).

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
import json
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

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
        path: Path | None = None,
    ) -> None:
        self.ttl, self.idle, self._clock, self._capacity = ttl, idle, clock, capacity
        self._held: OrderedDict[str, Session] = OrderedDict()
        self._kept = _Kept(path) if path is not None else None

    def open(self, admin: Admin) -> tuple[str, Session]:
        """A new session for ``admin``: the cookie value, and the session."""
        now = self._clock()
        cookie = secrets.token_urlsafe(32)
        session = Session(admin, secrets.token_urlsafe(32), now, now)
        while len(self._held) >= self._capacity:
            self._held.popitem(last=False)
        key = _key(cookie)
        self._held[key] = session
        if self._kept is not None:
            self._kept.put(key, session, self._ended_before(now), self._capacity)
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session the cookie names (its use noted), or None."""
        if not cookie or len(cookie) > 256:
            return None
        key = _key(cookie)
        session = self._held.get(key)
        if session is None and self._kept is not None:
            session = self._kept.get(key)  # opened before this collector started
        if session is None:
            return None
        now = self._clock()
        if now - session.started >= self.ttl or now - session.seen >= self.idle:
            self._held.pop(key, None)
            if self._kept is not None:
                self._kept.drop(key)
            return None
        session = replace(session, seen=now)
        self._held[key] = session
        self._held.move_to_end(key)
        while len(self._held) > self._capacity:
            self._held.popitem(last=False)
        if self._kept is not None:
            self._kept.seen(key, now)
        return session

    def close(self, cookie: str | None) -> Session | None:
        """End the session the cookie names; it, if there was one."""
        if not cookie:
            return None
        key = _key(cookie)
        session = self._held.pop(key, None)
        if self._kept is not None:
            session = self._kept.drop(key) or session
        return session

    def _ended_before(self, now: float) -> tuple[float, float]:
        """(started before, seen before): what has ended by ``now``."""
        return now - self.ttl, now - self.idle

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


class _Kept:
    """The sessions in a SQLite file (0600, WAL, every write committed at once): by the
    cookie's hash, as in memory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_TABLE)

    def put(self, key: str, session: Session, ended: tuple[float, float], capacity: int) -> None:
        """Keep ``session``; forget those ended by now, and the oldest past ``capacity``."""
        admin = session.admin
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM sessions WHERE started <= ? OR seen <= ?", ended)
            self._db.execute(
                "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions"
                " ORDER BY seen DESC LIMIT -1 OFFSET ?)",
                (capacity - 1,),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    admin.sub,
                    admin.username,
                    json.dumps(list(admin.amr)),
                    admin.auth_time,
                    session.csrf,
                    session.started,
                    session.seen,
                ),
            )

    def get(self, key: str) -> Session | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM sessions WHERE key = ?", (key,)).fetchone()  # noqa: S608  # nosec B608 # a constant column list; the key is bound
        if row is None:
            return None
        sub, username, amr, auth_time, csrf, started, seen = row
        admin = Admin(str(sub), str(username), tuple(json.loads(amr)), int(auth_time))
        return Session(admin, str(csrf), float(started), float(seen))

    def seen(self, key: str, now: float) -> None:
        self._db.execute("UPDATE sessions SET seen = ? WHERE key = ?", (now, key))

    def drop(self, key: str) -> Session | None:
        found = self.get(key)
        self._db.execute("DELETE FROM sessions WHERE key = ?", (key,))
        return found

    def close(self) -> None:
        self._db.close()


_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, sub TEXT NOT NULL,"
    " username TEXT NOT NULL, amr TEXT NOT NULL, auth_time INTEGER NOT NULL,"
    " csrf TEXT NOT NULL, started REAL NOT NULL, seen REAL NOT NULL)"
)
_COLUMNS: Final = "sub, username, amr, auth_time, csrf, started, seen"
