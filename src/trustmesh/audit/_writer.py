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
tables, and the ledger's appends have their advisory lock)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["sqlite_writer"]

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
