"""The database engine's tables: connections and roles as sealed values by name, and
leases — sealed too, with in the clear beside each its connection's name, when it is due
for revocation, how many revocations failed, and the accessor of the token that created
it (revoking that token revokes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, delete, select
from sqlalchemy import update as sql_update

from trustmesh.store import SqlStore

__all__ = ["DatabaseStore", "LeaseRow", "connections", "leases", "roles"]

metadata = MetaData()


def _by_name(table: str) -> Table:
    """A table of sealed values by name."""
    return Table(
        table,
        metadata,
        Column("name", String(128), primary_key=True),
        Column("value", LargeBinary, nullable=False),
    )


connections = _by_name("secrets_db_connections")
roles = _by_name("secrets_db_roles")
leases = Table(
    "secrets_db_leases",
    metadata,
    Column("name", String(256), primary_key=True),  # the lease id
    Column("db_name", String(128), nullable=False, index=True),
    Column("revoke_at", Float, nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("value", LargeBinary, nullable=False),
    Column("token", String(64), nullable=True, index=True),  # the creating token's accessor
)


@dataclass(frozen=True)
class LeaseRow:
    value: bytes
    db_name: str
    revoke_at: float


class DatabaseStore(SqlStore):
    """The engine's tables: each value a sealed blob under its name."""

    metadata = metadata

    async def get(self, table: Table, name: str) -> bytes | None:
        async with self.engine.connect() as c:
            value = (await c.execute(select(table.c.value).where(table.c.name == name))).scalar()
        return bytes(value) if value is not None else None

    async def put(self, table: Table, name: str, value: bytes) -> None:
        async with self.engine.begin() as c:
            done = await c.execute(
                sql_update(table).where(table.c.name == name).values(value=value)
            )
            if done.rowcount == 0:
                await c.execute(table.insert().values(name=name, value=value))

    async def drop(self, table: Table, name: str) -> None:
        async with self.engine.begin() as c:
            await c.execute(delete(table).where(table.c.name == name))

    async def names(self, table: Table, prefix: str = "") -> list[str]:
        query = select(table.c.name).order_by(table.c.name)
        if prefix:
            query = query.where(table.c.name.startswith(prefix, autoescape=True))
        async with self.engine.connect() as c:
            return [row[0] for row in await c.execute(query)]

    async def add_lease(
        self, lease_id: str, db_name: str, revoke_at: float, value: bytes, token: str
    ) -> None:
        async with self.engine.begin() as c:
            await c.execute(
                leases.insert().values(
                    name=lease_id,
                    db_name=db_name,
                    revoke_at=revoke_at,
                    attempts=0,
                    value=value,
                    token=token,
                )
            )

    async def lease_token(self, lease_id: str) -> str | None:
        """The accessor of the token that created ``lease_id``."""
        query = select(leases.c.token).where(leases.c.name == lease_id)
        async with self.engine.connect() as c:
            token = (await c.execute(query)).scalar()
        return str(token) if token else None

    async def token_leases(self, accessor: str) -> list[str]:
        """The leases the token with ``accessor`` created."""
        query = select(leases.c.name).where(leases.c.token == accessor).order_by(leases.c.name)
        async with self.engine.connect() as c:
            return [row[0] for row in await c.execute(query)]

    async def lease(self, lease_id: str) -> LeaseRow | None:
        query = select(leases.c.value, leases.c.db_name, leases.c.revoke_at).where(
            leases.c.name == lease_id
        )
        async with self.engine.connect() as c:
            row = (await c.execute(query)).first()
        return LeaseRow(bytes(row[0]), row[1], row[2]) if row is not None else None

    async def change_lease(self, lease_id: str, **values: Any) -> None:
        async with self.engine.begin() as c:
            await c.execute(sql_update(leases).where(leases.c.name == lease_id).values(**values))

    async def failed_lease(self, lease_id: str, revoke_at: float) -> int:
        """Count a failed revocation; due again no later than ``revoke_at``."""
        async with self.engine.begin() as c:
            row = (
                await c.execute(
                    select(leases.c.attempts, leases.c.revoke_at).where(leases.c.name == lease_id)
                )
            ).first()
            if row is None:
                return 0
            await c.execute(
                sql_update(leases)
                .where(leases.c.name == lease_id)
                .values(attempts=row[0] + 1, revoke_at=min(row[1], revoke_at))
            )
        return int(row[0]) + 1

    async def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """Leases due for revocation at ``now``, the oldest first: (lease id, connection)."""
        query = (
            select(leases.c.name, leases.c.db_name)
            .where(leases.c.revoke_at <= now)
            .order_by(leases.c.revoke_at)
            .limit(limit)
        )
        async with self.engine.connect() as c:
            return [(row[0], row[1]) for row in await c.execute(query)]

    async def has_leases(self, db_name: str) -> bool:
        query = select(leases.c.name).where(leases.c.db_name == db_name).limit(1)
        async with self.engine.connect() as c:
            return (await c.execute(query)).first() is not None
