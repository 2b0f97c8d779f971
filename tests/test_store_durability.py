"""An acknowledged write survives power loss, not only a crash of the process: every
SQLite database the stack keeps (the embedded default) commits with
``synchronous=FULL`` in WAL mode — the WAL is fsynced at each commit. With ``NORMAL``,
WAL commits are fsynced only at checkpoints, so an audit batch acknowledged to its
producer (which then drops its spooled copy), a secret written or a key rotated could
vanish with the machine's power."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.store import create_engine, sqlite_url

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_every_engine_connection_commits_durably(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path / "store.db"))
    try:
        for _ in range(2):  # a new pooled connection too
            async with engine.connect() as connection:
                sync = (await connection.execute(text("PRAGMA synchronous"))).scalar()
                mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
                assert (sync, mode) == (FULL, "wal")
            await engine.dispose()
    finally:
        await engine.dispose()


def test_the_identity_store_commits_durably(tmp_path: Path) -> None:
    store = SqliteIdentityStore(tmp_path / "identity.db")
    try:
        assert store._db.execute("PRAGMA synchronous").fetchone() == (FULL,)
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()
