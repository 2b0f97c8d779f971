"""On PostgreSQL the collector's role still may only INSERT and SELECT: pruning goes
through the role ``prune_grants`` makes, which may DELETE records and INSERT prune
checkpoints and nothing else; the collector reads the prune checkpoints and verifies.
The prune checkpoint and the DELETE are one transaction: when the DELETE is refused,
the prune checkpoint is not kept either (nor written to the file), and the log is as it
was."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from ledgerrig import T0, ocsf, trusted
from services import POSTGRES_ADMIN, postgres_database
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from trustmesh import crypto
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.ledger_schema import collector_grants, prune_grants
from trustmesh.audit.retention import Retention
from trustmesh.errors import UsageError
from trustmesh.store import create_engine

KEY = crypto.generate_signing_key()
RULE = Retention(default=timedelta(days=7))


def test_the_prune_grants_name_delete_on_records_and_insert_on_prune_checkpoints() -> None:
    tables = '"audit_records", "audit_checkpoints", "audit_quarantine", "audit_prunes"'
    assert prune_grants("pruner", collector="collector") == (
        f'REVOKE ALL ON {tables} FROM "pruner"',
        'GRANT SELECT, DELETE ON "audit_records" TO "pruner"',
        'GRANT SELECT ON "audit_checkpoints" TO "pruner"',
        'GRANT SELECT, INSERT ON "audit_prunes" TO "pruner"',
        'REVOKE ALL ON "audit_prunes" FROM "collector"',
        'GRANT SELECT ON "audit_prunes" TO "collector"',
    )
    in_schema = prune_grants("p", collector="c", schema="audit")
    assert in_schema[1] == 'GRANT USAGE ON SCHEMA "audit" TO "p"'
    assert 'DELETE ON "audit"."audit_records"' in in_schema[2]
    for role, collector in [('x"; DROP TABLE audit_records; --', "c"), ("p", "Bad"), ("c", "c")]:
        with pytest.raises(UsageError):
            prune_grants(role, collector=collector)


@dataclass
class Roles:
    owner: Ledger
    collector: Ledger  # as the collector's role, pruning through the pruner's
    pruner_url: str


@pytest.fixture
async def roles(tmp_path: Path) -> AsyncIterator[Roles]:
    suffix = uuid.uuid4().hex[:12]
    collector, pruner = f"tm_audit_collector_{suffix}", f"tm_audit_pruner_{suffix}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        for role in (collector, pruner):
            await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_audit") as url:
            owner = Ledger(create_engine(url))
            await owner.create()
            async with owner.engine.begin() as connection:
                for statement in (
                    *collector_grants(collector),
                    *prune_grants(pruner, collector=collector),
                ):
                    await connection.execute(text(statement))

            def as_role(role: str) -> str:
                return make_url(url).set(username=role).render_as_string(hide_password=False)

            ledger = Ledger(
                create_engine(as_role(collector)),
                checkpoint_file=tmp_path / "cp.jsonl",
                prune_engine=create_engine(as_role(pruner)),
            )
            try:
                yield Roles(owner, ledger, as_role(pruner))
            finally:
                await ledger.close()
                await owner.close()
    finally:
        for role in (collector, pruner):
            await admin.execute(f'DROP OWNED BY "{role}"')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def _refused(engine: AsyncEngine | None, statements: list[str]) -> None:
    assert engine is not None
    for statement in statements:
        with pytest.raises(DBAPIError, match="permission denied"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))


@pytest.mark.services
async def test_pruning_goes_through_its_own_role_and_the_collector_still_cannot_delete(
    roles: Roles,
) -> None:
    log = roles.collector
    await log.append([ocsf(n) for n in range(1, 11)], now=T0)
    await log.checkpoint(KEY, now=T0)
    done = await log.prune(KEY, RULE, now=T0 + timedelta(days=8))
    assert (done.total, done.first, done.last) == (9, 1, 9)
    verdict = await log.verify(trusted(KEY), checkpoint_file=log.checkpoint_file)
    assert (verdict.finding, verdict.records, verdict.pruned) == (None, 1, 9)
    await _refused(
        log.engine,
        [
            "DELETE FROM audit_records WHERE seq = 10",
            "TRUNCATE audit_records",
            "INSERT INTO audit_prunes (first_seq, last_seq, time, line) VALUES (50, 50, 0, '')",
            "UPDATE audit_prunes SET line = ''",
            "DELETE FROM audit_prunes",
        ],
    )
    await _refused(
        log.prune_engine,
        [
            "UPDATE audit_records SET decision = 'allow'",
            "INSERT INTO audit_records (seq, uid, time, class_uid, body, hash)"
            " VALUES (99, 'x', 0, 1, '', '')",
            "UPDATE audit_prunes SET line = ''",
            "DELETE FROM audit_prunes",
            "DELETE FROM audit_checkpoints",
            "INSERT INTO audit_checkpoints (last_seq, last_hash, count, time, previous, key_id,"
            " signature) VALUES (99, '', 0, 0, '', 'k', '')",
            "TRUNCATE audit_records",
            "DELETE FROM audit_quarantine",
        ],
    )


@pytest.mark.services
async def test_a_refused_delete_keeps_no_prune_checkpoint(roles: Roles) -> None:
    log = roles.collector
    await log.append([ocsf(n) for n in range(1, 11)], now=T0)
    await log.checkpoint(KEY, now=T0)
    pruner = make_url(roles.pruner_url).username
    async with roles.owner.engine.begin() as connection:
        await connection.execute(text(f'REVOKE DELETE ON audit_records FROM "{pruner}"'))
    with pytest.raises(DBAPIError, match="permission denied"):
        await log.prune(KEY, RULE, now=T0 + timedelta(days=8))
    assert await log.prune_checkpoints() == []
    assert b'"kind"' not in log.checkpoint_file.read_bytes()  # type: ignore[union-attr]
    verdict = await log.verify(trusted(KEY), checkpoint_file=log.checkpoint_file)
    assert (verdict.finding, verdict.records, verdict.pruned) == (None, 10, 0)
