"""The span store on PostgreSQL, as the collector's role with only :func:`span_grants`:
it stores (a retry once, another reporter's span with the same ids beside it), reads a
trace and prunes past retention; and it may not rewrite a span or touch the log."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from services import POSTGRES_ADMIN, postgres_database
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from trustmesh.audit.ledger import Ledger
from trustmesh.audit.otlp import SpanEvent, SpanRecord
from trustmesh.audit.spans import SpanStore, span_grants
from trustmesh.errors import UsageError
from trustmesh.store import create_engine

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _span(span_id: int, start: int, reporter: str = "spiffe://td/payments") -> SpanRecord:
    return SpanRecord(
        trace_id=TRACE,
        span_id=f"{span_id:016x}",
        parent_span_id=None,
        name="GET /charges/{id}",
        kind="server",
        service="payments",
        reporter=reporter,
        start_ns=start,
        end_ns=start + 5,
        status="ok",
        status_message=None,
        attributes={"http.response.status_code": 200, "tags": ["a"]},
        events=(SpanEvent("retry", start + 1, {"attempt": 2}),),
    )


def test_the_span_grants_are_select_insert_delete_on_the_span_table_only() -> None:
    assert span_grants("tm_collector") == (
        'REVOKE ALL ON "audit_spans" FROM "tm_collector"',
        'GRANT SELECT, INSERT, DELETE ON "audit_spans" TO "tm_collector"',
    )
    assert span_grants("c", schema="audit")[1] == 'GRANT USAGE ON SCHEMA "audit" TO "c"'
    with pytest.raises(UsageError):
        span_grants('x"; DROP TABLE audit_spans; --')


@pytest.mark.services
async def test_the_collector_role_stores_reads_and_prunes_spans() -> None:
    role = f"tm_span_collector_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_spans") as url:
            owner = SpanStore(create_engine(url))
            await owner.create()
            await Ledger(owner.engine).create()
            async with owner.engine.begin() as connection:
                for statement in span_grants(role):
                    await connection.execute(text(statement))
            await owner.close()
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            store = SpanStore(create_engine(as_role))
            try:
                await store.create()  # exists already: nothing to make
                spans = [_span(1, 100), _span(2, 200)]
                assert await store.add(spans, received=1000) == {
                    (TRACE, f"{n:016x}") for n in (1, 2)
                }
                assert await store.add(spans, received=1001) == set()
                squat = _span(1, 50, reporter="spiffe://td/orders")
                assert await store.add([squat], received=1002) == {(TRACE, f"{1:016x}")}
                found, cut = await store.trace(TRACE, limit=2)
                assert ([s.start_ns for s in found], cut) == ([50, 100], True)
                assert found[1] == spans[0]
                assert await store.prune(before_ns=150) == 2
                found, cut = await store.trace(TRACE)
                assert ([s.span_id for s in found], cut) == ([f"{2:016x}"], False)
                for statement in (
                    "UPDATE audit_spans SET reporter = 'spiffe://td/x'",
                    "TRUNCATE audit_spans",
                    "SELECT * FROM audit_records",
                ):
                    with pytest.raises(DBAPIError, match="permission denied"):
                        async with store.engine.begin() as connection:
                            await connection.execute(text(statement))
            finally:
                await store.close()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
