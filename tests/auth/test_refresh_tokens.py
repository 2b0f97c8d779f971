"""Refresh tokens: rotation with reuse detection (a replayed token revokes its family),
an absolute lifetime, hashed storage, and exactly one winner among concurrent refreshes —
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from trustmesh.auth.db import AuthStore
from trustmesh.store import create_engine, sqlite_url

NOW = 1_900_000_000


async def _rotation_and_reuse(store: AuthStore) -> None:
    first, family = await store.start_refresh_family("shop-web", "alice", "orders:read", NOW, 3600)
    rotated = await store.rotate_refresh(first, "shop-web", NOW + 10)
    assert rotated.status == "rotated"
    assert rotated.token is not None
    assert rotated.token != first
    assert rotated.family == family
    second = await store.rotate_refresh(rotated.token, "shop-web", NOW + 20)
    assert second.status == "rotated"
    # the old token comes back: reuse — the whole family is revoked, newest token included
    assert (await store.rotate_refresh(first, "shop-web", NOW + 30)).status == "reused"
    assert second.token is not None
    assert (await store.rotate_refresh(second.token, "shop-web", NOW + 31)).status == "revoked"
    # another client cannot spend it; garbage is unknown
    other, _ = await store.start_refresh_family("shop-web", "bob", "", NOW, 3600)
    assert (await store.rotate_refresh(other, "batch", NOW + 1)).status == "unknown"
    assert (await store.rotate_refresh("garbage", "shop-web", NOW + 1)).status == "unknown"


async def _absolute_lifetime(store: AuthStore) -> None:
    token, _ = await store.start_refresh_family("shop-web", "alice", "", NOW, 100)
    for t in (NOW + 40, NOW + 80):
        outcome = await store.rotate_refresh(token, "shop-web", t)
        assert outcome.status == "rotated"
        assert outcome.token is not None
        token = outcome.token
    assert (await store.rotate_refresh(token, "shop-web", NOW + 100)).status == "expired"


async def _one_winner(store: AuthStore) -> None:
    token, _ = await store.start_refresh_family("shop-web", "alice", "", NOW, 3600)
    outcomes = await asyncio.gather(
        *(store.rotate_refresh(token, "shop-web", NOW + 5) for _ in range(20))
    )
    statuses = sorted(o.status for o in outcomes)
    assert statuses.count("rotated") == 1, statuses
    assert set(statuses) <= {"rotated", "reused", "revoked"}
    winner = next(o for o in outcomes if o.status == "rotated")
    assert winner.token is not None
    # the replays revoked the family: the winner's token is dead too
    assert (await store.rotate_refresh(winner.token, "shop-web", NOW + 6)).status == "revoked"


async def _bound_family(store: AuthStore) -> None:
    """A family started over mTLS refreshes only over mTLS; a try without leaves the
    token unspent (the rightful holder is not locked out)."""
    token, family = await store.start_refresh_family("shop-web", "alice", "", NOW, 3600, bound=True)
    assert family.bound
    assert (await store.rotate_refresh(token, "shop-web", NOW + 1)).status == "needs-mtls"
    outcome = await store.rotate_refresh(token, "shop-web", NOW + 2, over_mtls=True)
    assert outcome.status == "rotated"
    assert outcome.family is not None
    assert outcome.family.bound
    # an unbound family refreshes over either channel
    plain, _ = await store.start_refresh_family("shop-web", "alice", "", NOW, 3600)
    assert (await store.rotate_refresh(plain, "shop-web", NOW + 1)).status == "rotated"


async def test_bound_family_on_sqlite(sqlite_store: AuthStore) -> None:
    await _bound_family(sqlite_store)


async def test_a_store_from_an_older_release_gains_the_new_column(short_tmp: Path) -> None:
    """Tables an older release made get the columns a newer one declares (with their
    defaults for existing rows); nothing is lost."""
    path = short_tmp / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE auth_refresh_families (family_id VARCHAR(64) PRIMARY KEY, "
            "client_id VARCHAR(128) NOT NULL, subject VARCHAR(2048) NOT NULL, scope TEXT NOT NULL, "
            "created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, revoked_at BIGINT, "
            "revoked_reason VARCHAR(64))"
        )
        db.execute(
            "INSERT INTO auth_refresh_families VALUES ('f1', 'shop-web', 'alice', '', 1, 9, NULL, NULL)"
        )
    store = AuthStore(create_engine(sqlite_url(path)))
    try:
        await store.create()
        await store.create()  # idempotent
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT family_id, bound FROM auth_refresh_families").fetchall()
    assert rows == [("f1", 0)]


async def test_rotation_and_reuse_on_sqlite(sqlite_store: AuthStore) -> None:
    await _rotation_and_reuse(sqlite_store)


async def test_absolute_lifetime_on_sqlite(sqlite_store: AuthStore) -> None:
    await _absolute_lifetime(sqlite_store)


async def test_twenty_concurrent_refreshes_one_winner_on_sqlite(sqlite_store: AuthStore) -> None:
    await _one_winner(sqlite_store)


async def test_refresh_tokens_are_stored_hashed(sqlite_store: AuthStore, short_tmp: Path) -> None:
    token, _ = await sqlite_store.start_refresh_family("shop-web", "alice", "", NOW, 3600)
    with sqlite3.connect(short_tmp / "auth.db") as db:
        rows = db.execute("SELECT * FROM auth_refresh_tokens").fetchall()
    assert token not in repr(rows)


@pytest.mark.services
async def test_refresh_on_postgresql(pg_store: AuthStore) -> None:
    await _rotation_and_reuse(pg_store)
    await _absolute_lifetime(pg_store)
    await _one_winner(pg_store)
    await _bound_family(pg_store)
