"""Storage of the identity service: entries, join tokens, bindings, issued SVIDs, CAs,
suspended SPIFFE IDs.

Behind a small Protocol; the default is one SQLite file in the state directory, shared by
the running identity service and the CLI (WAL mode; the service notices the CLI's writes
through ``PRAGMA data_version``).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trustmesh.errors import ConflictError, NotFoundError, PermissionDeniedError
from trustmesh.identity.models import (
    Binding,
    IssuedSVID,
    JoinToken,
    RegistrationEntry,
    Suspension,
)
from trustmesh.reasons import Reason

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    ttl_seconds INTEGER,
    created_at TEXT NOT NULL,
    UNIQUE (spiffe_id, selectors)
);
CREATE TABLE IF NOT EXISTS join_tokens (
    token_hash TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    used_at TEXT
);
CREATE TABLE IF NOT EXISTS bindings (
    pid INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    spiffe_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (pid, start_time, spiffe_id)
);
CREATE TABLE IF NOT EXISTS svids (
    spiffe_id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    chain_pem TEXT NOT NULL,
    issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS suspensions (
    spiffe_id TEXT PRIMARY KEY,
    until_ms INTEGER,
    cause TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ca_generations (
    id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL
);
"""


_SUSPENSION = "spiffe_id, until_ms, cause, created_ms, by"


@dataclass(frozen=True)
class StoredGeneration:
    """One CA generation as stored: public certificates in PEM, private keys sealed."""

    id: int
    doc: dict[str, object]


class IdentityStore(Protocol):
    def data_version(self) -> int: ...
    def add_entry(self, entry: RegistrationEntry) -> None: ...
    def list_entries(self) -> list[RegistrationEntry]: ...
    def remove_entry(self, entry_id: str) -> RegistrationEntry: ...
    def add_join_token(self, token: JoinToken) -> None: ...
    def redeem_join_token(
        self, token_hash: str, *, now: dt.datetime, pid: int, start_time: int
    ) -> str: ...
    def bindings_for(self, pid: int, start_time: int) -> list[Binding]: ...
    def list_bindings(self) -> list[Binding]: ...
    def prune_bindings(self, alive: Callable[[int, int], bool]) -> int: ...
    def reset_bindings_after_boot(self, boot_id: str) -> bool: ...
    def remove_bindings(self, pid: int, start_time: int) -> None: ...
    def record_svid(self, svid: IssuedSVID) -> None: ...
    def last_svid(self, spiffe_id: str) -> IssuedSVID | None: ...
    def save_generations(self, generations: list[StoredGeneration]) -> None: ...
    def load_generations(self) -> list[StoredGeneration]: ...
    def suspend(self, suspension: Suspension) -> None: ...
    def lift_suspension(self, spiffe_id: str, now_ms: int) -> Suspension | None: ...
    def suspensions(self, now_ms: int) -> list[Suspension]: ...
    def suspensions_version(self) -> int: ...


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _dt(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


class SqliteIdentityStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss too
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    # -- registration entries -------------------------------------------------------
    def add_entry(self, entry: RegistrationEntry) -> None:
        try:
            self._db.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                (
                    entry.id,
                    entry.spiffe_id,
                    json.dumps(sorted(entry.selectors)),
                    int(entry.ttl.total_seconds()) if entry.ttl else None,
                    _ts(entry.created_at),
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(
                f"an entry for {entry.spiffe_id} with these selectors already exists"
            ) from None

    def list_entries(self) -> list[RegistrationEntry]:
        rows = self._db.execute(
            "SELECT id, spiffe_id, selectors, ttl_seconds, created_at FROM entries ORDER BY created_at, id"
        ).fetchall()
        return [
            RegistrationEntry(
                id=r[0],
                spiffe_id=r[1],
                selectors=frozenset(json.loads(r[2])),
                ttl=dt.timedelta(seconds=r[3]) if r[3] is not None else None,
                created_at=_dt(r[4]),
            )
            for r in rows
        ]

    def remove_entry(self, entry_id: str) -> RegistrationEntry:
        for entry in self.list_entries():
            if entry.id == entry_id:
                self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
                return entry
        raise NotFoundError(f"no registration entry {entry_id!r}")

    # -- join tokens and the bindings they create --------------------------------------
    def add_join_token(self, token: JoinToken) -> None:
        self._db.execute(
            "INSERT INTO join_tokens VALUES (?, ?, ?, ?, NULL)",
            (token.token_hash, token.spiffe_id, _ts(token.expires_at), _ts(token.created_at)),
        )

    def redeem_join_token(
        self, token_hash: str, *, now: dt.datetime, pid: int, start_time: int
    ) -> str:
        """Consume a token once, atomically, and bind its SPIFFE ID to the process."""
        with self._transaction():
            row = self._db.execute(
                "SELECT spiffe_id, expires_at, used_at FROM join_tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                raise PermissionDeniedError("unknown join token", reason=Reason.JOIN_TOKEN_INVALID)
            if row[2] is not None:
                raise PermissionDeniedError(
                    "join token already used", reason=Reason.JOIN_TOKEN_USED
                )
            if _dt(row[1]) <= now:
                raise PermissionDeniedError("join token expired", reason=Reason.JOIN_TOKEN_EXPIRED)
            if self._suspended(row[0], int(now.timestamp() * 1000)):  # the token stays unused
                raise PermissionDeniedError(
                    f"{row[0]} is suspended", reason=Reason.SPIFFE_ID_SUSPENDED
                )
            self._db.execute(
                "UPDATE join_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                (_ts(now), token_hash),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO bindings VALUES (?, ?, ?, ?)",
                (pid, start_time, row[0], _ts(now)),
            )
            return str(row[0])

    def bindings_for(self, pid: int, start_time: int) -> list[Binding]:
        rows = self._db.execute(
            "SELECT pid, start_time, spiffe_id, created_at FROM bindings"
            " WHERE pid = ? AND start_time = ?",
            (pid, start_time),
        ).fetchall()
        return [Binding(r[0], r[1], r[2], _dt(r[3])) for r in rows]

    def list_bindings(self) -> list[Binding]:
        rows = self._db.execute("SELECT pid, start_time, spiffe_id, created_at FROM bindings")
        return [Binding(r[0], r[1], r[2], _dt(r[3])) for r in rows.fetchall()]

    def prune_bindings(self, alive: Callable[[int, int], bool]) -> int:
        """Drop bindings whose process is gone; return how many."""
        gone = [
            (b.pid, b.start_time) for b in self.list_bindings() if not alive(b.pid, b.start_time)
        ]
        for pid, start_time in gone:
            self.remove_bindings(pid, start_time)
        return len(gone)

    def reset_bindings_after_boot(self, boot_id: str) -> bool:
        """(pid, start time) pairs repeat after a reboot: forget every binding of another
        boot. True when bindings were dropped."""
        with self._transaction():
            row = self._db.execute("SELECT value FROM meta WHERE key = 'boot_id'").fetchone()
            if row is not None and row[0] == boot_id:
                return False
            self._db.execute("DELETE FROM bindings")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_id', ?)", (boot_id,))
            return row is not None

    def remove_bindings(self, pid: int, start_time: int) -> None:
        self._db.execute("DELETE FROM bindings WHERE pid = ? AND start_time = ?", (pid, start_time))

    # -- issued SVIDs (public facts only) ------------------------------------------------
    def record_svid(self, svid: IssuedSVID) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO svids VALUES (?, ?, ?, ?, ?, ?)",
            (
                svid.spiffe_id,
                svid.serial,
                _ts(svid.not_before),
                _ts(svid.not_after),
                svid.chain_pem,
                _ts(svid.issued_at),
            ),
        )

    def last_svid(self, spiffe_id: str) -> IssuedSVID | None:
        row = self._db.execute(
            "SELECT spiffe_id, serial, not_before, not_after, chain_pem, issued_at"
            " FROM svids WHERE spiffe_id = ?",
            (spiffe_id,),
        ).fetchone()
        if row is None:
            return None
        return IssuedSVID(row[0], row[1], _dt(row[2]), _dt(row[3]), row[4], _dt(row[5]))

    # -- CA generations ----------------------------------------------------------------
    def save_generations(self, generations: list[StoredGeneration]) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM ca_generations")
            self._db.executemany(
                "INSERT INTO ca_generations VALUES (?, ?)",
                [(g.id, json.dumps(g.doc, sort_keys=True)) for g in generations],
            )

    def load_generations(self) -> list[StoredGeneration]:
        rows = self._db.execute("SELECT id, doc FROM ca_generations ORDER BY id").fetchall()
        return [StoredGeneration(r[0], json.loads(r[1])) for r in rows]

    # -- suspended SPIFFE IDs ----------------------------------------------------------
    def suspend(self, suspension: Suspension) -> None:
        """Suspend (or suspend again: the new end and cause replace the old)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO suspensions VALUES (?, ?, ?, ?, ?)",
                (
                    suspension.spiffe_id,
                    suspension.until,
                    suspension.cause,
                    suspension.created,
                    suspension.by,
                ),
            )
            self._bump_suspensions()

    def lift_suspension(self, spiffe_id: str, now_ms: int) -> Suspension | None:
        """Lift ``spiffe_id``'s suspension; the one lifted (None: none was in force)."""
        with self._transaction():
            row = self._db.execute(
                f"SELECT {_SUSPENSION} FROM suspensions WHERE spiffe_id = ?",  # noqa: S608  # nosec B608 # a constant column list; the SPIFFE ID is bound
                (spiffe_id,),
            ).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM suspensions WHERE spiffe_id = ?", (spiffe_id,))
            self._bump_suspensions()
        lifted = Suspension(*row)
        return lifted if lifted.active(now_ms) else None

    def suspensions(self, now_ms: int) -> list[Suspension]:
        """The suspensions in force at ``now_ms`` (an ended one stays stored, unread, until
        the ID is suspended again or lifted)."""
        rows = self._db.execute(
            f"SELECT {_SUSPENSION} FROM suspensions"  # noqa: S608 - a constant column list  # nosec B608 # a constant column list; the time is bound
            " WHERE until_ms IS NULL OR until_ms > ? ORDER BY created_ms, spiffe_id",
            (now_ms,),
        ).fetchall()
        return [Suspension(*r) for r in rows]

    def suspensions_version(self) -> int:
        """Moves on every change to the suspensions (what the feed's ETag is)."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = 'suspensions_version'"
        ).fetchone()
        return int(row[0]) if row else 0

    def _suspended(self, spiffe_id: str, now_ms: int) -> bool:
        row = self._db.execute(
            "SELECT until_ms FROM suspensions WHERE spiffe_id = ?", (spiffe_id,)
        ).fetchone()
        return row is not None and (row[0] is None or now_ms < row[0])

    def _bump_suspensions(self) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES ('suspensions_version', '1') ON CONFLICT (key)"
            " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
