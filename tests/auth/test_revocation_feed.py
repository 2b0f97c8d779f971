"""The revocation feed never skips a revocation. Gateways and services read it by cursor
(``/v1/revocations?since=N``: rows after the last key they saw), so a key must never be
handed out below one a reader has already passed: SQLite must not reuse the key of a
pruned newest row, and on PostgreSQL a row must not commit after a higher key a reader
has already read. Tested on the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from services import postgres_database
from sqlalchemy import insert, text

from trustmesh.auth.db import AuthStore, revocations
from trustmesh.auth.revocations import RevocationStore
from trustmesh.store import append_in_order, create_engine, sqlite_url

NOW = 1_000_000


@pytest.fixture
async def sqlite_store(short_tmp: Path) -> AsyncIterator[AuthStore]:
    made = AuthStore(create_engine(sqlite_url(short_tmp / "feed.db")))
    await made.create()
    try:
        yield made
    finally:
        await made.close()


async def test_a_pruned_newest_token_revocation_keeps_its_key(sqlite_store: AuthStore) -> None:
    store = sqlite_store
    await store.revoke("lives-long", "c", expires_at=NOW + 3600, now=NOW)
    await store.revoke("expires-soon", "c", expires_at=NOW + 10, now=NOW)
    seen = await store.revocations_since(0, NOW)
    cursor = seen[-1].seq  # a gateway has read up to the newest key
    assert [r.jti for r in seen] == ["lives-long", "expires-soon"]

    await store.prune(NOW + 20)  # the newest row is gone: its key must stay spent
    await store.revoke("revoked-later", "c", expires_at=NOW + 3600, now=NOW + 20)

    after = await store.revocations_since(cursor, NOW + 20)
    assert [r.jti for r in after] == ["revoked-later"]
    assert after[0].seq > cursor


async def test_a_pruned_newest_subject_revocation_keeps_its_key(sqlite_store: AuthStore) -> None:
    feed = RevocationStore(sqlite_store)
    first = await feed.revoke_subject("alice", before=NOW, now=NOW, reason="locked")
    # the subject revocation expires SUBJECT_REVOCATION_SECONDS after ``before``
    await feed.prune(first.expires_at + 1)
    assert await feed.subjects_since(0, first.expires_at + 1) == []

    later = first.expires_at + 1
    second = await feed.revoke_subject("bob", before=later, now=later, reason="locked")
    assert second.seq > first.seq
    assert [r.subject for r in await feed.subjects_since(first.seq, later)] == ["bob"]


async def test_a_feed_table_from_an_older_release_is_rebuilt_keeping_its_rows(
    short_tmp: Path,
) -> None:
    url = sqlite_url(short_tmp / "older.db")
    engine = create_engine(url)
    async with engine.begin() as conn:  # the table as an older release made it
        await conn.execute(
            text(
                "CREATE TABLE auth_revocations (seq INTEGER NOT NULL PRIMARY KEY, "
                "jti VARCHAR(128) NOT NULL UNIQUE, client_id VARCHAR(128) NOT NULL, "
                "expires_at BIGINT NOT NULL, revoked_at BIGINT NOT NULL)"
            )
        )
        await conn.execute(
            text("INSERT INTO auth_revocations VALUES (7, 'kept', 'c', :exp, :now)"),
            {"exp": NOW + 3600, "now": NOW},
        )
        await conn.execute(
            text("INSERT INTO auth_revocations VALUES (9, 'newest', 'c', :exp, :now)"),
            {"exp": NOW + 10, "now": NOW},
        )
    await engine.dispose()

    store = AuthStore(create_engine(url))
    await store.create()
    try:
        async with store.engine.connect() as conn:
            ddl = (
                await conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = 'auth_revocations'")
                )
            ).scalar()
        assert "AUTOINCREMENT" in str(ddl).upper()
        assert [(r.seq, r.jti) for r in await store.revocations_since(0, NOW)] == [
            (7, "kept"),
            (9, "newest"),
        ]
        assert not await store.revoke("kept", "c", expires_at=NOW + 3600, now=NOW)  # still unique

        await store.prune(NOW + 20)
        await store.revoke("after-upgrade", "c", expires_at=NOW + 3600, now=NOW + 20)
        assert [r.jti for r in await store.revocations_since(9, NOW + 20)] == ["after-upgrade"]
    finally:
        await store.close()


@pytest.mark.services
async def test_a_reader_never_passes_a_key_that_commits_later() -> None:
    """PostgreSQL hands out sequence values as inserts start: a revocation that started
    first but commits second would sit below a key a gateway has already read."""
    async with postgres_database("tm_feed") as url:
        store = AuthStore(create_engine(url))
        await store.create()
        try:
            async with store.engine.connect() as slow:
                transaction = await slow.begin()
                await append_in_order(slow, revocations)  # as AuthStore.revoke does
                await slow.execute(
                    insert(revocations).values(
                        jti="started-first", client_id="c", expires_at=NOW + 3600, revoked_at=NOW
                    )
                )
                second = asyncio.create_task(
                    store.revoke("started-second", "c", expires_at=NOW + 3600, now=NOW)
                )
                await _until_waiting_on_a_lock(store, second)
                # a gateway polling now must not see a key above the uncommitted one
                assert await store.revocations_since(0, NOW) == []
                await transaction.commit()
            assert await second
            feed = await store.revocations_since(0, NOW)
            assert [r.jti for r in feed] == ["started-first", "started-second"]
            assert feed[0].seq < feed[1].seq
        finally:
            await store.close()


async def _until_waiting_on_a_lock(store: AuthStore, task: asyncio.Task[bool]) -> None:
    """Wait until another session waits on an advisory lock (fail if ``task`` ends)."""
    for _ in range(500):
        if task.done():
            pytest.fail("the second revocation committed while the first was still open")
        async with store.engine.connect() as conn:
            waiting = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )
            ).scalar()
        if waiting:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the second revocation neither waited nor committed")
