"""The relational store every server component shares: SQLAlchemy 2 async, SQLite by
default (a file in the state directory), PostgreSQL at scale (``postgresql+asyncpg://``; with ``sslmode=verify-full``, the server
is checked against the workload CA by what the component passes as ``tls``:
:func:`trustmesh.sdk.store_tls.postgres`).

Each component declares its tables on its own :class:`sqlalchemy.MetaData` and creates
them with :func:`create_tables`; nothing here knows any component.

A table that is read as a feed (rows after a cursor, in key order: revocations) must
never hand out a key below one a reader has seen: declare it with
``sqlite_autoincrement=True`` (SQLite otherwise reuses the largest key once its row is
deleted; tables an older release made are rebuilt with it) and append to it with
:func:`append_in_order` (on PostgreSQL a sequence hands out keys in the order inserts
start, not the order they commit: a reader could pass a key whose row commits later).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import MetaData, Table, event, inspect, select, text
from sqlalchemy import column as column_clause
from sqlalchemy import table as table_clause
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateColumn

from trustmesh.errors import ConfigError, StateError, UsageError

__all__ = [
    "PostgresTLS",
    "SqlStore",
    "SqliteLayout",
    "append_in_order",
    "create_engine",
    "create_tables",
    "sqlite_url",
    "unreachable",
]

#: PostgreSQL's SQLSTATE for a privilege the role does not hold.
_INSUFFICIENT_PRIVILEGE = "42501"
#: SQLSTATE classes of a server that cannot serve now: 08 (connection exception), 57P
#: (operator intervention: shutting down, starting up).
_UNREACHABLE_STATES = ("08", "57P")

_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}


@dataclass(frozen=True)
class SqliteLayout:
    """How an SQLite store lays out its file and caches it.

    ``page_size`` (bytes, a power of two from 512 to 65,536) applies to a new file only:
    SQLite fixes it when the first table is made, and a file in WAL mode keeps its own.
    ``cache_kib``: each connection's page cache (SQLite's default is 2,000 KiB)."""

    page_size: int = 4096
    cache_kib: int = 2000

    def __post_init__(self) -> None:
        size = self.page_size
        if not 512 <= size <= 65536 or size & (size - 1):
            raise UsageError("an SQLite page size is a power of two from 512 to 65536")
        if self.cache_kib < 1:
            raise UsageError("an SQLite page cache is at least 1 KiB")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now — the connection refused,
    lost or timed out, the server shutting down or starting up — rather than that a
    statement was wrong: an outage, to answer with a 503 (and retry), not a bug."""
    if isinstance(exc, OSError):  # refused, reset, timed out (TimeoutError is one)
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        state = getattr(exc.orig, "sqlstate", None)
        return isinstance(state, str) and state.startswith(_UNREACHABLE_STATES)
    return False


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.absolute()}"


#: What makes a PostgreSQL URL's TLS: the URL as the driver takes it, and what makes
#: each connection's context (None: the driver's own, as the URL says).
PostgresTLS = Callable[[URL], tuple[URL, Callable[[], ssl.SSLContext] | None]]
_VERIFYING = ("verify-full", "verify-ca")


def create_engine(
    url: str,
    *,
    sqlite_layout: SqliteLayout | None = None,
    tls: PostgresTLS | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine for ``url``: ``sqlite+aiosqlite:///…`` or ``postgresql+asyncpg://…``.

    SQLite gets WAL with synchronous=FULL (a commit is fsynced: what was acknowledged
    survives power loss, as on PostgreSQL), a busy timeout and foreign keys on every
    connection; the file is created 0600 in a 0700 directory (it holds sealed keys and
    client records). ``sqlite_layout``: the page size of a new file and the page cache of
    each connection, for a store written in bulk (ignored on PostgreSQL). ``tls``: how a
    PostgreSQL URL with ``sslmode=verify-full|verify-ca`` connects (the component's
    SVID, :func:`trustmesh.sdk.store_tls.postgres`); without it such a URL is refused."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError("database URL is not a valid URL") from None
    if parsed.drivername not in _DRIVERS:
        raise UsageError(
            f"database driver {parsed.drivername!r} is not supported "
            f"(expected one of: {', '.join(sorted(_DRIVERS))})"
        )
    if parsed.drivername.startswith("sqlite"):
        return _sqlite_engine(url, parsed.database, sqlite_layout, kwargs)
    return _postgres_engine(parsed, tls, kwargs)


def _sqlite_engine(
    url: str, database: str | None, layout: SqliteLayout | None, kwargs: dict[str, Any]
) -> AsyncEngine:
    if not database or database == ":memory:":
        raise UsageError("an SQLite database must be a file")
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if layout is not None:  # the page size first: WAL fixes a new file's
            cursor.execute(f"PRAGMA page_size={int(layout.page_size)}")
            cursor.execute(f"PRAGMA cache_size={-int(layout.cache_kib)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss too
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _postgres_engine(url: URL, tls: PostgresTLS | None, kwargs: dict[str, Any]) -> AsyncEngine:
    kwargs.setdefault("pool_pre_ping", True)
    tls_context = None
    if tls is not None:
        url, tls_context = tls(url)
    elif url.query.get("sslmode") in _VERIFYING:
        raise ConfigError(
            f"sslmode={url.query['sslmode']}: this store has no identity to verify the server with"
        )
    engine = create_async_engine(url, **kwargs)
    if tls_context is not None:  # made at each connect: the SVID it presents rotates

        @event.listens_for(engine.sync_engine, "do_connect")
        def _verified(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
            params["ssl"] = tls_context()

    return engine


async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create ``metadata``'s tables that do not exist yet, and add the columns a newer
    release declared to tables an older one made (idempotent). An added column must be
    nullable or have a server default: existing rows need a value."""
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.run_sync(_add_missing_columns, metadata)
            if connection.dialect.name == "sqlite":
                await connection.run_sync(_add_autoincrement, metadata)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        names = ", ".join(t.name for t in metadata.sorted_tables)
        raise ConfigError(
            f"the database role {engine.url.username!r} may not make the tables it needs "
            f"({names}) and they do not exist yet: their owner makes them "
            "(for the audit database: trustmesh audit grants ROLE --tables)"
        ) from None


async def append_in_order(connection: AsyncConnection, table: Table) -> None:
    """Make the rest of this transaction the only one appending to ``table`` until it
    commits, so keys are committed in the order they are handed out (a feed reader never
    passes a key whose row is not visible yet). SQLite has one writer at a time anyway;
    on PostgreSQL a transaction-scoped advisory lock, keyed by the table's name."""
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(table.name.encode()).digest()[:8], "big", signed=True)
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _add_autoincrement(connection: Connection, metadata: MetaData) -> None:
    """Rebuild a table an older release made without ``AUTOINCREMENT`` that now wants it
    (SQLite cannot alter that in place): copy its rows into a new table, keeping their
    keys, so the next key is above every one handed out before."""
    for table in metadata.sorted_tables:
        if not table.dialect_options["sqlite"].get("autoincrement"):
            continue
        ddl = connection.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
            {"name": table.name},
        ).scalar()
        if ddl is None or "AUTOINCREMENT" in ddl.upper():
            continue
        old = f"{table.name}__before_autoincrement"
        connection.execute(text(f'ALTER TABLE "{table.name}" RENAME TO "{old}"'))
        for index in table.indexes:  # their names are still taken by the renamed table
            connection.execute(text(f'DROP INDEX IF EXISTS "{index.name}"'))
        table.create(connection)
        names = [c.name for c in table.columns]
        rows = select(*table_clause(old, *(column_clause(n) for n in names)).c)
        connection.execute(table.insert().from_select(names, rows))
        connection.execute(text(f'DROP TABLE "{old}"'))


def _add_missing_columns(connection: Connection, metadata: MetaData) -> None:
    inspector = inspect(connection)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable and column.server_default is None:
                raise StateError(
                    f"table {table.name} lacks column {column.name}, which cannot be added "
                    "to existing rows; migrate the database"
                )
            spec = CreateColumn(column).compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {spec}"))


class SqlStore:
    """A component's tables (``metadata``) on one engine: created on demand, released
    with the engine."""

    metadata: ClassVar[MetaData]

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self) -> None:
        await create_tables(self.engine, self.metadata)

    async def close(self) -> None:
        await self.engine.dispose()
