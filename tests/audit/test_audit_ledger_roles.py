"""On PostgreSQL the collector's role may only INSERT and SELECT: with the statements
``collector_grants`` emits, it appends, checkpoints, quarantines, searches and verifies,
and every UPDATE, DELETE or TRUNCATE of the log is refused by the database itself."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest
from ledgerrig import T0, ocsf, trusted
from services import POSTGRES_ADMIN, postgres_database
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from trustmesh import crypto
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.ledger_schema import collector_grants
from trustmesh.audit.search import Query
from trustmesh.errors import UsageError
from trustmesh.store import create_engine

FORBIDDEN = [
    "UPDATE audit_records SET decision = 'allow'",
    "DELETE FROM audit_records WHERE seq = 1",
    "TRUNCATE audit_records",
    "UPDATE audit_checkpoints SET count = 0",
    "DELETE FROM audit_checkpoints",
    "TRUNCATE audit_checkpoints",
    "UPDATE audit_quarantine SET reason = 'fine'",
    "DELETE FROM audit_quarantine",
]


def test_the_grants_name_every_table_and_only_insert_and_select() -> None:
    statements = collector_grants("audit_collector")
    tables = '"audit_checkpoints", "audit_quarantine", "audit_records"'
    assert statements == (
        f'REVOKE ALL ON {tables} FROM "audit_collector"',
        f'GRANT SELECT, INSERT ON {tables} TO "audit_collector"',
    )
    in_schema = collector_grants("c", schema="audit")
    assert in_schema[1] == 'GRANT USAGE ON SCHEMA "audit" TO "c"'
    assert '"audit"."audit_records"' in in_schema[2]
    for bad in ('x"; DROP TABLE audit_records; --', "", "Upper", "a" * 64):
        with pytest.raises(UsageError):
            collector_grants(bad)
    with pytest.raises(UsageError):
        collector_grants("c", schema="bad schema")


@pytest.mark.services
async def test_the_collector_role_appends_and_reads_but_cannot_rewrite(tmp_path: Path) -> None:
    role = f"tm_audit_collector_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_audit") as url:
            owner = Ledger(create_engine(url))
            await owner.create()
            async with owner.engine.begin() as connection:
                for statement in collector_grants(role):
                    await connection.execute(text(statement))
            await owner.close()
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            collector = Ledger(create_engine(as_role), checkpoint_file=tmp_path / "cp.jsonl")
            try:
                await _exercise(collector)
            finally:
                await collector.close()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def _exercise(collector: Ledger) -> None:
    key = crypto.generate_signing_key()
    done = await collector.append([ocsf(n) for n in range(1, 11)], now=T0)
    assert done.head == 10
    assert (await collector.append([ocsf(11), {"not": "an event"}], now=T0)).head == 11
    await collector.quarantine(b"\x00garbage", "not JSON", now=T0)
    assert await collector.checkpoint(key, now=T0) is not None
    assert len(await collector.search(Query(decision="deny"))) == 6
    assert len(await collector.quarantined()) == 2
    assert (await collector.verify(trusted(key))).finding is None
    for statement in FORBIDDEN:
        with pytest.raises(DBAPIError, match="permission denied"):
            async with collector.engine.begin() as connection:
                await connection.execute(text(statement))
    verdict = await collector.verify(trusted(key), checkpoint_file=collector.checkpoint_file)
    assert (verdict.finding, verdict.records, verdict.covered) == (None, 11, 11)
