"""One writer at a time on each SQLite database, within this process.

SQLite takes one writer at a time; a second one waits in SQLite's busy handler, which
sleeps 1, 2, 5, 10… up to 100 ms between tries — whatever the first one needs. In the
collector every write (a batch appended, a checkpoint, an alert, a response record)
goes through the same file, and while an append waited so did every delivery behind it
(measured: 169 waits, 2.8 s in all, over a 50,000-event run at ~10,000 events/s). The
collector's writers queue here instead, in the event loop, and each takes the file the
moment the one before it commits; the busy handler is left for other processes (an
operator's CLI), which still wait as before.

Keyed by the database file and the running event loop: two engines on one file share
the queue; PostgreSQL writers are not queued (they do not block each other on these
tables, and the ledger's appends have their advisory lock).

:func:`in_sqlite_thread` runs a whole write as one call in the connection's own thread
(aiosqlite's): a batch appended awaited that thread about fifteen times (each await a
greenlet switch, a queue, a wake-up of the loop), and every hop cost the event loop more
than the rows it carried."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustmesh.errors import StateError

__all__ = ["in_sqlite_thread", "sqlite_writer"]

T = TypeVar("T")

_QUEUES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def sqlite_writer(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold ``engine``'s SQLite file for writing within this process (no-op on other
    databases). Not re-entrant: a writer must not open another write inside it."""
    if engine.dialect.name != "sqlite":
        yield
        return
    locks = _QUEUES.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(str(engine.url.database), asyncio.Lock())
    async with lock:
        yield


async def in_sqlite_thread(connection: AsyncConnection, work: Callable[..., T], *args: Any) -> T:
    """``work(sqlite3_connection, *args)`` in the thread that owns ``connection``'s SQLite
    connection (aiosqlite's worker), as one call: what it executes is part of the
    transaction ``connection`` is in (SQLAlchemy commits or rolls it back as usual).
    ``work`` runs off the event loop: it must touch nothing the loop uses meanwhile."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    # aiosqlite runs every call as `_execute(fn, *args)` in its thread, and SQLAlchemy's
    # own aiosqlite adapter queues functions on that thread the same way
    execute = getattr(driver, "_execute", None)
    native = getattr(driver, "_connection", None)
    if execute is None or not isinstance(native, sqlite3.Connection):
        raise StateError("the SQLite driver is not aiosqlite's: cannot run in its thread")
    result: T = await execute(work, native, *args)
    return result
