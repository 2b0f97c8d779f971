"""The relational store every server component shares: SQLAlchemy 2 async, SQLite by
default (a file in the state directory), PostgreSQL at scale (``postgresql+asyncpg://``).

Each component declares its tables on its own :class:`sqlalchemy.MetaData` and creates
them with :func:`create_tables`; nothing here knows any component.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateColumn

from trustmesh.errors import StateError, UsageError

__all__ = ["SqlStore", "create_engine", "create_tables", "sqlite_url"]

_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.absolute()}"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``: ``sqlite+aiosqlite:///…`` or ``postgresql+asyncpg://…``.

    SQLite gets WAL, a busy timeout and foreign keys on every connection; the file is
    created 0600 in a 0700 directory (it holds sealed keys and client records)."""
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
        database = parsed.database
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
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create ``metadata``'s tables that do not exist yet, and add the columns a newer
    release declared to tables an older one made (idempotent). An added column must be
    nullable or have a server default: existing rows need a value."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.run_sync(_add_missing_columns, metadata)


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
