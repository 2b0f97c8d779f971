"""The collector's span store: the OpenTelemetry spans every component sends it
(OTLP/HTTP, ``POST /v1/traces``: https://opentelemetry.io/docs/specs/otlp/#otlphttp —
the request and its ``ExportTraceServiceResponse``, partial success when spans are
refused, ``400``/``413``/``415`` for a request refused whole; read and judged in
:mod:`trustmesh.audit.otlp`), kept beside the audit log so that one trace shows each
hop's spans and each decision's event (``GET /v1/traces/{trace_id}``).

Table ``audit_spans`` (in a :class:`MetaData` of its own, :data:`span_tables`): trace_id
(32 hex), span_id (16 hex), parent_span_id (16 hex or NULL), name, kind, service (the
``service.name`` the span claims), reporter (the SPIFFE ID of the mTLS peer that
delivered it), start_ns, end_ns, status, status_message, attributes and events (JSON
text) and received (ns, the collector's clock).

What is decided:

- a span is known by (trace_id, span_id, **reporter**): a retried delivery is stored
  once (``INSERT … ON CONFLICT DO NOTHING``), and a workload that sends a span with the
  ids of another's (a callee learns its caller's span id from ``traceparent``) stores
  its own row beside it — it cannot make the real span a "duplicate", and the trace
  shows who reported each;
- spans are not evidence: they are not in the hash chain, and nothing signs them. The
  decisions that matter are in the audit log, which the trace view returns with them;
- retention (:meth:`SpanStore.prune`): a span goes once its start *or* its arrival is
  older than ``audit.tracing.retention`` — the start is the producer's claim, so a span
  dated in the future still goes when its arrival is old. So on PostgreSQL the
  collector's role DELETEs on this table, and on this table only (:func:`span_grants`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from trustmesh.audit._writer import sqlite_writer
from trustmesh.audit.ledger_schema import _names
from trustmesh.audit.otlp import SpanEvent, SpanRecord
from trustmesh.errors import UsageError
from trustmesh.store import SqlStore

__all__ = ["MAX_TRACE_SPANS", "SpanStore", "span_grants", "span_tables", "spans", "trace_id_of"]

#: The most spans ``GET /v1/traces/{trace_id}`` returns (then ``"truncated": true``).
MAX_TRACE_SPANS: Final = 5000
_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")

span_tables = MetaData()
spans = Table(
    "audit_spans",
    span_tables,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("reporter", String(2048), primary_key=True),
    Column("parent_span_id", String(16)),
    Column("name", String(256), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("service", String(256)),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("status", String(8), nullable=False),
    Column("status_message", String(1024)),
    Column("attributes", Text, nullable=False),
    Column("events", Text, nullable=False),
    Column("received", BigInteger, nullable=False),
    Index("audit_spans_start", "start_ns"),
    Index("audit_spans_received", "received"),
)


def trace_id_of(value: str) -> str:
    """``value`` if it is a trace id as stored (32 lowercase hex), else UsageError."""
    if not _TRACE_ID.fullmatch(value):
        raise UsageError("a trace id is 32 lowercase hex digits")
    return value


def span_grants(role: str, *, schema: str | None = None) -> tuple[str, ...]:
    """The PostgreSQL statements that let ``role`` (the collector) store, read and prune
    spans: SELECT, INSERT and DELETE on ``audit_spans`` — not evidence, so the
    collector's own role prunes them (:func:`~trustmesh.audit.ledger_schema.collector_grants`
    keeps it from deleting anything else)."""
    prefix = _names(role, schema)
    table = f'{prefix}"{spans.name}"'
    statements = [f'REVOKE ALL ON {table} FROM "{role}"']
    if schema:
        statements.append(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    statements.append(f'GRANT SELECT, INSERT, DELETE ON {table} TO "{role}"')
    return tuple(statements)


def _row(span: SpanRecord, received: int) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "reporter": span.reporter,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "kind": span.kind,
        "service": span.service,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "status": span.status,
        "status_message": span.status_message,
        "attributes": json.dumps(span.attributes, separators=(",", ":")),
        "events": json.dumps([e.to_dict() for e in span.events], separators=(",", ":")),
        "received": received,
    }


def _record(row: Any) -> SpanRecord:
    return SpanRecord(
        trace_id=row.trace_id,
        span_id=row.span_id,
        parent_span_id=row.parent_span_id,
        name=row.name,
        kind=row.kind,
        service=row.service,
        reporter=row.reporter,
        start_ns=row.start_ns,
        end_ns=row.end_ns,
        status=row.status,
        status_message=row.status_message,
        attributes=json.loads(row.attributes),
        events=tuple(
            SpanEvent(e["name"], e["time_ns"], e["attributes"]) for e in json.loads(row.events)
        ),
    )


class SpanStore(SqlStore):
    """``audit_spans`` on the collector's engine (module docstring)."""

    metadata = span_tables

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)

    async def add(self, records: Sequence[SpanRecord], *, received: int) -> set[tuple[str, str]]:
        """Store ``records`` (one reporter's) in one transaction, each span once; the
        (trace id, span id) of those newly stored (not stored before)."""
        if not records:
            return set()
        rows = [_row(span, received) for span in records]
        dialect = self.engine.dialect.name
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(spans)
        statement = insert.on_conflict_do_nothing().returning(spans.c.trace_id, spans.c.span_id)
        async with sqlite_writer(self.engine), self.engine.begin() as connection:
            result = await connection.execute(statement, rows)
            return {(row.trace_id, row.span_id) for row in result}

    async def trace(
        self, trace_id: str, *, limit: int = MAX_TRACE_SPANS
    ) -> tuple[list[SpanRecord], bool]:
        """The spans of ``trace_id`` by start (then span id, reporter), at most ``limit``;
        and whether there were more."""
        query = (
            select(spans)
            .where(spans.c.trace_id == trace_id)
            .order_by(spans.c.start_ns, spans.c.span_id, spans.c.reporter)
            .limit(limit + 1)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    async def prune(self, *, before_ns: int) -> int:
        """Delete the spans that started, or arrived, before ``before_ns``; how many."""
        statement = delete(spans).where(
            or_(spans.c.start_ns < before_ns, spans.c.received < before_ns)
        )
        async with sqlite_writer(self.engine), self.engine.begin() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)
