"""The secrets service's tables (SQLite by default, PostgreSQL at scale). Nothing here is
plaintext that matters: values, metadata, transit keys and the keyring are sealed blobs
(the barrier seals them before they get here); tokens are kept as SHA-256 digests.

- ``secrets_system``: the seal configuration, the sealed root key, the sealed keyring;
- ``secrets_kv_meta`` and ``secrets_kv_values``: KV v2 — one sealed metadata blob per
  path (its versions' times and flags inside), one sealed value per live version;
- ``secrets_transit``: one sealed blob per transit key;
- ``secrets_tokens``: login tokens by digest.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from trustmesh.store import SqlStore

__all__ = ["SecretsStore", "Tx"]

metadata = MetaData()

system = Table(
    "secrets_system",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
kv_meta = Table(
    "secrets_kv_meta",
    metadata,
    Column("path", String(1024), primary_key=True),
    Column("meta", LargeBinary, nullable=False),
)
kv_values = Table(
    "secrets_kv_values",
    metadata,
    Column("path", String(1024), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
transit_keys = Table(
    "secrets_transit",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("key", LargeBinary, nullable=False),
)
tokens = Table(
    "secrets_tokens",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("accessor", String(64), nullable=False, unique=True),
    Column("record", Text, nullable=False),
    Column("expires", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)


class Tx:
    """One transaction's reads and writes (``SELECT … FOR UPDATE`` on PostgreSQL where a
    read is followed by a write)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.c = connection
        self._lock = connection.dialect.name == "postgresql"

    async def system(self, name: str) -> bytes | None:
        query = select(system.c.value).where(system.c.name == name)
        value = (await self.c.execute(query)).scalar()
        return bytes(value) if value is not None else None

    async def put_system(self, name: str, value: bytes) -> None:
        done = await self.c.execute(update(system).where(system.c.name == name).values(value=value))
        if done.rowcount == 0:
            await self.c.execute(system.insert().values(name=name, value=value))

    async def kv_meta(self, path: str, *, for_update: bool = False) -> bytes | None:
        query = select(kv_meta.c.meta).where(kv_meta.c.path == path)
        if for_update and self._lock:
            query = query.with_for_update()
        value = (await self.c.execute(query)).scalar()
        return bytes(value) if value is not None else None

    async def put_kv_meta(self, path: str, meta: bytes, *, new: bool) -> None:
        if new:
            await self.c.execute(kv_meta.insert().values(path=path, meta=meta))
        else:
            await self.c.execute(update(kv_meta).where(kv_meta.c.path == path).values(meta=meta))

    async def kv_value(self, path: str, version: int) -> bytes | None:
        query = select(kv_values.c.value).where(
            and_(kv_values.c.path == path, kv_values.c.version == version)
        )
        value = (await self.c.execute(query)).scalar()
        return bytes(value) if value is not None else None

    async def put_kv_value(self, path: str, version: int, value: bytes) -> None:
        await self.c.execute(kv_values.insert().values(path=path, version=version, value=value))

    async def drop_kv_values(self, path: str, versions: list[int] | None = None) -> None:
        """Destroy ``versions`` of ``path`` (every one: None)."""
        condition = kv_values.c.path == path
        if versions is not None:
            condition = and_(condition, kv_values.c.version.in_(versions))
        await self.c.execute(delete(kv_values).where(condition))

    async def drop_kv_meta(self, path: str) -> None:
        await self.c.execute(delete(kv_meta).where(kv_meta.c.path == path))

    async def kv_paths(self, prefix: str, limit: int) -> list[str]:
        """Paths at or under ``prefix`` (a folder ending in '/', or '' for all), in order."""
        query = select(kv_meta.c.path).order_by(kv_meta.c.path).limit(limit)
        if prefix:
            query = query.where(
                and_(kv_meta.c.path >= prefix, kv_meta.c.path < prefix[:-1] + chr(ord("/") + 1))
            )
        return [row[0] for row in await self.c.execute(query)]

    async def transit_key(self, name: str, *, for_update: bool = False) -> bytes | None:
        query = select(transit_keys.c.key).where(transit_keys.c.name == name)
        if for_update and self._lock:
            query = query.with_for_update()
        value = (await self.c.execute(query)).scalar()
        return bytes(value) if value is not None else None

    async def put_transit_key(self, name: str, key: bytes, *, new: bool) -> None:
        if new:
            await self.c.execute(transit_keys.insert().values(name=name, key=key))
        else:
            await self.c.execute(
                update(transit_keys).where(transit_keys.c.name == name).values(key=key)
            )

    async def drop_transit_key(self, name: str) -> None:
        await self.c.execute(delete(transit_keys).where(transit_keys.c.name == name))

    async def transit_names(self) -> list[str]:
        query = select(transit_keys.c.name).order_by(transit_keys.c.name)
        return [row[0] for row in await self.c.execute(query)]


class SecretsStore(SqlStore):
    metadata = metadata

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        async with self.engine.begin() as connection:
            yield Tx(connection)

    async def token(self, digest: str) -> tuple[str, float, bool] | None:
        query = select(tokens.c.record, tokens.c.expires, tokens.c.revoked).where(
            tokens.c.digest == digest
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return (row[0], row[1], bool(row[2])) if row is not None else None

    async def token_by_accessor(self, accessor: str) -> tuple[str, float, bool] | None:
        query = select(tokens.c.record, tokens.c.expires, tokens.c.revoked).where(
            tokens.c.accessor == accessor
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return (row[0], row[1], bool(row[2])) if row is not None else None

    async def put_token(self, digest: str, accessor: str, record: str, expires: float) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                tokens.insert().values(
                    digest=digest, accessor=accessor, record=record, expires=expires, revoked=False
                )
            )

    async def update_token(self, digest: str, record: str, expires: float) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                update(tokens)
                .where(tokens.c.digest == digest)
                .values(record=record, expires=expires)
            )

    async def revoke_token(self, digest: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                update(tokens).where(tokens.c.digest == digest).values(revoked=True)
            )

    async def prune_tokens(self, now: float) -> int:
        async with self.engine.begin() as connection:
            done = await connection.execute(delete(tokens).where(tokens.c.expires < now))
        return int(done.rowcount or 0)
