"""The audit log's tables (see :mod:`trustmesh.audit.ledger`), and the PostgreSQL grants
that let the collector append and read them — nothing else.

- ``audit_records``: seq (the SQLite rowid itself), the event uid (unique), the search
  columns, the canonical body and its link hash;
- ``audit_checkpoints``: the signed checkpoints, by the seq they sign;
- ``audit_quarantine``: refused bodies (keyed by a random id: no sequence to grant).
"""

from __future__ import annotations

import re

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table

from trustmesh.audit.chain import LIMITS
from trustmesh.errors import UsageError

__all__ = ["checkpoints", "collector_grants", "metadata", "quarantine", "records"]

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SEQ = BigInteger().with_variant(Integer, "sqlite")  # SQLite: the rowid itself

metadata = MetaData()
records = Table(
    "audit_records",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("uid", String(64), nullable=False, unique=True),
    Column("time", BigInteger, nullable=False),
    Column("class_uid", Integer, nullable=False),
    Column("principal", String(LIMITS["principal"])),
    Column("src_ip", String(LIMITS["src_ip"])),
    Column("decision", String(LIMITS["decision"])),
    Column("reason", String(LIMITS["reason"])),
    Column("trace_id", String(LIMITS["trace_id"])),
    Column("body", LargeBinary, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Index("audit_records_time", "time"),
    Index("audit_records_principal", "principal", "time"),
    Index("audit_records_trace", "trace_id"),
)
checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("last_seq", _SEQ, primary_key=True, autoincrement=False),
    Column("last_hash", LargeBinary(32), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("previous", LargeBinary(32), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)
quarantine = Table(
    "audit_quarantine",
    metadata,
    Column("id", String(32), primary_key=True),  # no sequence: INSERT is all it needs
    Column("received", BigInteger, nullable=False),
    Column("reason", String(512), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("digest", LargeBinary(32), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Index("audit_quarantine_received", "received"),
)


def collector_grants(
    role: str, *, schema: str | None = None, tables: MetaData = metadata
) -> tuple[str, ...]:
    """The PostgreSQL statements that let ``role`` (the collector) append to the log
    and read it, and nothing else: no UPDATE, DELETE or TRUNCATE. Run them as the
    tables' owner, which the collector must not be."""
    for name in (role, schema):
        if name is not None and not _ROLE.fullmatch(name):
            raise UsageError("a role or schema name is 1 to 63 lowercase letters, digits or _")
    prefix = f'"{schema}".' if schema else ""
    names = ", ".join(f'{prefix}"{t.name}"' for t in tables.sorted_tables)
    statements = [f'REVOKE ALL ON {names} FROM "{role}"']
    if schema:
        statements.append(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    statements.append(f'GRANT SELECT, INSERT ON {names} TO "{role}"')
    return tuple(statements)
