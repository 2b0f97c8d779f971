"""Where the collector keeps the responses it took, planned (a dry run) or could not
take, and their undoing — in the audit database, INSERT and SELECT only (an undo is a
row of its own, never an UPDATE), so the collector's PostgreSQL role stays as narrow as
the ledger's (:func:`response_grants`)."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, MetaData, String, Table, select

from trustmesh.audit._writer import in_sqlite_thread, sqlite_writer
from trustmesh.audit.ledger_schema import collector_grants
from trustmesh.store import SqlStore

__all__ = ["ResponseRecord", "ResponseStore", "new_id", "response_grants"]

metadata = MetaData()
responses = Table(
    "audit_responses",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("time", BigInteger, nullable=False),  # ms since the epoch
    Column("alert_uid", String(64), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(2048), nullable=False),
    Column("duration_ms", BigInteger),
    Column("dry_run", Boolean, nullable=False),
    Column("outcome", String(16), nullable=False),  # taken, planned, failed, skipped
    Column("detail", String(512), nullable=False),
    Index("audit_responses_time", "time"),
)
undos = Table(
    "audit_response_undos",
    metadata,
    Column("response_id", String(32), primary_key=True),  # one undo per response
    Column("time", BigInteger, nullable=False),
    Column("by", String(256), nullable=False),
    Column("detail", String(512), nullable=False),
)


@dataclass(frozen=True)
class ResponseRecord:
    id: str
    time: int
    alert_uid: str
    rule_id: str
    action: str
    target: str
    duration_ms: int | None
    dry_run: bool
    outcome: str
    detail: str
    undone_at: int | None = None
    undone_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "alert_uid": self.alert_uid,
            "rule_id": self.rule_id,
            "action": self.action,
            "target": self.target,
            "duration_ms": self.duration_ms,
            "dry_run": self.dry_run,
            "outcome": self.outcome,
            "detail": self.detail,
            "undone_at": self.undone_at,
            "undone_by": self.undone_by,
        }


def response_grants(role: str, *, schema: str | None = None) -> tuple[str, ...]:
    """The ledger's grants (:func:`~trustmesh.audit.ledger_schema.collector_grants`) for
    these tables: SELECT and INSERT, nothing else."""
    return collector_grants(role, schema=schema, tables=metadata)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _execute(native: sqlite3.Connection, sql: str, values: tuple[object, ...]) -> None:
    native.execute(sql, values)


class ResponseStore(SqlStore):
    metadata = metadata

    async def add(self, record: ResponseRecord) -> ResponseRecord:
        row = record.to_dict()
        del row["undone_at"], row["undone_by"]
        async with sqlite_writer(self.engine), self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":  # one call in the connection's thread
                names = ", ".join(row)  # the record's own field names, not input
                sql = f"INSERT INTO {responses.name} ({names}) VALUES ({_marks(len(row))})"  # noqa: S608  # nosec B608 # columns are the record model's own field names; values are bound
                await in_sqlite_thread(connection, _execute, sql, tuple(row.values()))
            else:  # the statement and its parameters apart: compiled once
                await connection.execute(responses.insert(), row)
        return record

    async def undo(self, record_id: str, *, now: int, by: str, detail: str) -> bool:
        """Mark ``record_id`` undone; False when it was undone already."""
        async with sqlite_writer(self.engine), self.engine.begin() as connection:
            found = await connection.execute(
                select(undos.c.response_id).where(undos.c.response_id == record_id)
            )
            if found.first() is not None:
                return False
            await connection.execute(
                undos.insert().values(
                    response_id=record_id, time=now, by=by[:256], detail=detail[:512]
                )
            )
        return True

    async def get(self, record_id: str) -> ResponseRecord | None:
        found = await self._select(responses.c.id == record_id, limit=1)
        return found[0] if found else None

    async def newest(self, *, limit: int = 100) -> list[ResponseRecord]:
        """The newest first."""
        return await self._select(None, limit=max(1, min(limit, 1000)))

    async def _select(self, where: Any, *, limit: int) -> list[ResponseRecord]:
        query = (
            select(responses, undos.c.time.label("undone_at"), undos.c.by.label("undone_by"))
            .outerjoin(undos, undos.c.response_id == responses.c.id)
            .order_by(responses.c.time.desc(), responses.c.id)
            .limit(limit)
        )
        if where is not None:
            query = query.where(where)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            ResponseRecord(
                r.id,
                r.time,
                r.alert_uid,
                r.rule_id,
                r.action,
                r.target,
                r.duration_ms,
                bool(r.dry_run),
                r.outcome,
                r.detail,
                r.undone_at,
                r.undone_by,
            )
            for r in rows
        ]


def new_id() -> str:
    return uuid.uuid4().hex
