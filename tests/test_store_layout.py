"""An SQLite store written in bulk (the audit log) chooses its page size and page cache:
a new file takes the page size, an existing one keeps its own and opens as before (a log
an older release made), every connection gets the cache, and a layout SQLite cannot use
is refused before any file is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from trustmesh.audit.ledger import LAYOUT, Ledger
from trustmesh.errors import UsageError
from trustmesh.store import SqliteLayout, create_engine, sqlite_url


async def _pragmas(url: str, layout: SqliteLayout | None) -> tuple[int, int, str]:
    engine = create_engine(url, sqlite_layout=layout)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))
        async with engine.connect() as connection:
            size = (await connection.execute(text("PRAGMA page_size"))).scalar()
            cache = (await connection.execute(text("PRAGMA cache_size"))).scalar()
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
        return int(size or 0), int(cache or 0), str(mode)
    finally:
        await engine.dispose()


async def test_a_new_file_takes_the_layout_and_an_old_one_keeps_its_pages(
    tmp_path: Path,
) -> None:
    wide = SqliteLayout(page_size=16384, cache_kib=8192)
    new = sqlite_url(tmp_path / "new.db")
    assert await _pragmas(new, wide) == (16384, -8192, "wal")
    old = sqlite_url(tmp_path / "old.db")
    assert await _pragmas(old, None) == (4096, -2000, "wal")  # SQLite's defaults
    assert await _pragmas(old, wide) == (4096, -8192, "wal")  # pages kept, cache taken


async def test_the_audit_log_is_made_with_its_layout(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    ledger = Ledger(create_engine(sqlite_url(path), sqlite_layout=LAYOUT))
    await ledger.create()
    await ledger.close()
    assert path.read_bytes()[16:18] == LAYOUT.page_size.to_bytes(2, "big")  # file header


@pytest.mark.parametrize(("size", "cache"), [(1000, 2000), (256, 2000), (131072, 2000), (4096, 0)])
def test_a_layout_sqlite_cannot_use_is_refused(size: int, cache: int) -> None:
    with pytest.raises(UsageError):
        SqliteLayout(page_size=size, cache_kib=cache)
