"""``trustmesh audit grants ROLE``: the statements for every table the collector uses (the
log, the alerts, the responses), SELECT and INSERT only. Run by the owner on a real
PostgreSQL, they let a collector with that role append, checkpoint, store alerts and
responses (and undo one) — and the database itself refuses it every UPDATE, DELETE and
TRUNCATE, and moving the alert ids' sequence."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import asyncpg
import pytest
from ledgerrig import T0, ocsf, trusted
from services import POSTGRES_ADMIN, postgres_database
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from trustmesh import crypto
from trustmesh.audit import alerts as alerts_module
from trustmesh.audit import ledger_schema, response_store
from trustmesh.audit.alerts import AlertStore
from trustmesh.audit.detection import Alert
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.response_store import ResponseRecord, ResponseStore, new_id
from trustmesh.audit.spans import SpanStore
from trustmesh.cli import app
from trustmesh.errors import ConfigError
from trustmesh.store import create_engine

MS0 = int(T0.timestamp() * 1000)
TABLES = sorted(
    t.name
    for m in (ledger_schema.metadata, alerts_module.metadata, response_store.metadata)
    for t in m.sorted_tables
)


def grants(*args: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(app, ["audit", "grants", *args])
    return result.exit_code, result.stdout.splitlines(), result.stderr


def test_a_prune_role_may_delete_records_and_nothing_else() -> None:
    code, lines, _ = grants("tm_collector", "--prune-role", "tm_pruner")
    assert code == 0
    deleting = [line for line in lines if "DELETE" in line and "tm_pruner" in line]
    assert deleting == ['GRANT SELECT, DELETE ON "audit_records" TO "tm_pruner";']
    assert 'GRANT SELECT, INSERT ON "audit_prunes" TO "tm_pruner";' in lines
    code, _, err = grants("tm_collector", "--prune-role", "tm_collector")
    assert code == 2
    assert "must not be the collector" in err


def test_every_table_is_granted_select_and_insert_only() -> None:
    assert len(TABLES) == 7
    code, lines, _ = grants("tm_collector")
    assert code == 0
    assert all(line.endswith(";") for line in lines)
    granted = [line for line in lines if line.startswith("GRANT SELECT, INSERT ON ")]
    named = sorted(re.findall(r'"(audit_[a-z_]+)"', " ".join(granted)))
    assert named == TABLES  # each once
    revoked = " ".join(line for line in lines if line.startswith("REVOKE ALL ON "))
    assert sorted(re.findall(r'"(audit_[a-z_]+)"', revoked)) == sorted(
        [*TABLES, "audit_prunes", "audit_spans"]
    )
    # the spans, telemetry and no evidence, the collector prunes itself: DELETE there only
    spans = 'GRANT SELECT, INSERT, DELETE ON "audit_spans" TO "tm_collector";'
    assert spans in lines
    for line in (line for line in lines if line != spans):
        assert line.endswith('"tm_collector";')
        assert not re.search(r"\b(UPDATE|DELETE|TRUNCATE|OWNER|SUPERUSER)\b", line), line
        assert line.startswith(
            ("REVOKE ALL ON", "GRANT SELECT, INSERT ON", "GRANT USAGE ON ", "GRANT SELECT ON ")
        )
    # the prune checkpoints: read (verify needs them), never written by the collector
    assert 'GRANT SELECT ON "audit_prunes" TO "tm_collector";' in lines
    assert 'GRANT USAGE ON SEQUENCE "audit_alerts_id_seq" TO "tm_collector";' in lines


def test_a_schema_prefixes_every_table_and_is_granted_usage() -> None:
    code, lines, _ = grants("tm_collector", "--schema", "audit")
    assert code == 0
    assert 'GRANT USAGE ON SCHEMA "audit" TO "tm_collector";' in lines
    named = re.findall(r'(\S*)"(audit_[a-z_]+)"', " ".join(lines))
    assert named
    assert all(prefix.endswith('"audit".') for prefix, _ in named)


@pytest.mark.parametrize(
    "args", [['x"; DROP TABLE audit_records; --'], ["Upper"], ["c", "--schema", "a b"]]
)
def test_a_bad_name_is_refused_before_anything_is_printed(args: list[str]) -> None:
    code, lines, stderr = grants(*args)
    assert code == 2
    assert lines == []
    assert "a role or schema name is 1 to 63 lowercase letters" in stderr


def _alert(uid: str, address: str) -> Alert:
    return Alert(
        uid=uid,
        rule_id="brute-force",
        title="Brute force",
        level="high",
        kind="event_count",
        group=(("src_endpoint.ip", address),),
        event_uids=("e1", "e2"),
        measure=2,
        window_start=MS0,
        window_end=MS0 + 60_000,
        actions=(),
        rule_path="rules/brute_force.yml",
    )


FORBIDDEN = [
    *(f"UPDATE {t} SET {c} = {c}" for t, c in [  # noqa: S608 - our own table names
        ("audit_records", "decision"), ("audit_checkpoints", "count"),
        ("audit_quarantine", "reason"), ("audit_alerts", "level"),
        ("audit_alert_events", "event_uid"), ("audit_responses", "outcome"),
        ("audit_response_undos", "detail"),
    ]),
    *(f"DELETE FROM {t}" for t in TABLES),  # noqa: S608 - our own table names
    *(f"TRUNCATE {t}" for t in TABLES),
    "SELECT setval('audit_alerts_id_seq', 1)",
    # the spans: pruned (DELETE), never altered or emptied at once
    "UPDATE audit_spans SET name = name",
    "TRUNCATE audit_spans",
]  # fmt: skip


@pytest.mark.services
async def test_the_printed_grants_let_the_collector_append_and_nothing_else(
    tmp_path: Path,
) -> None:
    code, statements, _ = grants(role := f"tm_audit_grants_{uuid.uuid4().hex[:12]}")
    assert code == 0
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_grants") as url:
            owner = create_engine(url)
            for store in (Ledger(owner), AlertStore(owner), ResponseStore(owner), SpanStore(owner)):
                await store.create()
            async with owner.begin() as connection:  # as the owner runs the printed script
                for statement in statements:
                    await connection.execute(text(statement.removesuffix(";")))
            await owner.dispose()
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            engine = create_engine(as_role)
            try:
                await _collect(engine, tmp_path)
            finally:
                await engine.dispose()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def _collect(engine: AsyncEngine, tmp_path: Path) -> None:
    """What the collector does with its tables, then every rewrite, as the role."""
    ledger = Ledger(engine, checkpoint_file=tmp_path / "cp.jsonl")
    alert_store = AlertStore(engine)
    responses = ResponseStore(engine)
    for store in (ledger, alert_store, responses):
        await store.create()  # the tables exist: the collector's start creates nothing
    key = crypto.generate_signing_key()
    assert (await ledger.append([ocsf(n) for n in range(1, 6)], now=T0)).head == 5
    await ledger.quarantine(b"\x00", "not JSON", now=T0)
    assert await ledger.checkpoint(key, now=T0) is not None
    assert [
        a.uid
        for a in await alert_store.add([_alert("a1", "10.0.0.7"), _alert("a2", "10.0.0.8")], now=T0)
    ] == [
        "a1",
        "a2",
    ]
    record = ResponseRecord(
        new_id(), MS0, "a1", "brute-force", "block-address", "10.0.0.7", 600_000, False,
        "taken", "blocked",
    )  # fmt: skip
    await responses.add(record)
    assert await responses.undo(record.id, now=MS0 + 1, by="operator", detail="lifted")
    assert not await responses.undo(record.id, now=MS0 + 2, by="operator", detail="again")
    assert [r.undone_by for r in await responses.newest(limit=5)] == ["operator"]
    for statement in FORBIDDEN:
        with pytest.raises(DBAPIError, match="permission denied"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))
    verdict = await ledger.verify(trusted(key), checkpoint_file=ledger.checkpoint_file)
    assert (verdict.finding, verdict.records, verdict.covered) == (None, 5, 5)


def test_the_tables_come_first_where_asked_and_in_the_schema() -> None:
    code, lines, _ = grants("tm_collector", "--tables", "--schema", "audit")
    assert code == 0
    assert lines[0] == 'SET search_path TO "audit";'
    made = [line for line in lines if line.startswith("CREATE TABLE IF NOT EXISTS")]
    assert sorted(line.split()[5] for line in made) == sorted(
        [*TABLES, "audit_prunes", "audit_spans"]
    )
    first_grant = next(i for i, line in enumerate(lines) if line.startswith(("GRANT", "REVOKE")))
    assert all(not line.startswith("CREATE") for line in lines[first_grant:])


@pytest.mark.services
async def test_a_role_that_may_not_make_the_tables_is_told_and_the_owner_makes_them(
    tmp_path: Path,
) -> None:
    code, statements, _ = grants(role := f"tm_audit_tables_{uuid.uuid4().hex[:12]}", "--tables")
    assert code == 0
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_tables") as url:
            owner = create_engine(url)
            async with owner.begin() as connection:  # PostgreSQL 15: no CREATE on public
                await connection.execute(text(f'REVOKE CREATE ON SCHEMA public FROM "{role}"'))
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            engine = create_engine(as_role)
            try:
                with pytest.raises(ConfigError, match=r"may not make the tables.*--tables"):
                    await Ledger(engine).create()
                async with owner.begin() as connection:  # the owner runs the printed script
                    for statement in statements:
                        await connection.execute(text(statement.removesuffix(";")))
                await _collect(engine, tmp_path)
            finally:
                await engine.dispose()
                await owner.dispose()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
