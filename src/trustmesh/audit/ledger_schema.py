"""The audit log's tables (see :mod:`trustmesh.audit.ledger`), and the PostgreSQL grants
that let the collector append and read them — nothing else.

- ``audit_records``: seq (the SQLite rowid itself), the event uid (unique), the search
  columns, the canonical body and its link hash;
- ``audit_checkpoints``: the signed checkpoints, by the seq they sign;
- ``audit_quarantine``: refused bodies (keyed by a random id: no sequence to grant);
- ``audit_prunes``: the signed prune checkpoints (records removed by retention, each
  named with its link hash), one line each as the checkpoint file holds it, by their
  first seq. It is in a :class:`MetaData` of its own, :data:`prune_tables`: the
  collector only reads it, and the role that prunes (:func:`prune_grants`) is the one
  that may DELETE records — in the transaction that writes the prune checkpoint.
"""

from __future__ import annotations

import re

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table

from trustmesh.audit.chain import LIMITS
from trustmesh.errors import UsageError

__all__ = [
    "checkpoints",
    "collector_grants",
    "metadata",
    "prune_grants",
    "prune_tables",
    "prunes",
    "quarantine",
    "records",
]

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
prune_tables = MetaData()
prunes = Table(
    "audit_prunes",
    prune_tables,
    Column("first_seq", _SEQ, primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("line", LargeBinary, nullable=False),  # PruneCheckpoint.to_line()
)


def _names(role: str, schema: str | None) -> str:
    """The prefix of a table in ``schema``; UsageError for a name that is not one."""
    for name in (role, schema):
        if name is not None and not _ROLE.fullmatch(name):
            raise UsageError("a role or schema name is 1 to 63 lowercase letters, digits or _")
    return f'"{schema}".' if schema else ""


def collector_grants(
    role: str, *, schema: str | None = None, tables: MetaData = metadata
) -> tuple[str, ...]:
    """The PostgreSQL statements that let ``role`` (the collector) append to the log
    and read it, and nothing else: no UPDATE, DELETE or TRUNCATE. Run them as the
    tables' owner, which the collector must not be. (It reads the prune checkpoints
    too: :func:`prune_grants` lets it.)"""
    prefix = _names(role, schema)
    names = ", ".join(f'{prefix}"{t.name}"' for t in tables.sorted_tables)
    statements = [f'REVOKE ALL ON {names} FROM "{role}"']
    if schema:
        statements.append(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    statements.append(f'GRANT SELECT, INSERT ON {names} TO "{role}"')
    return tuple(statements)


def prune_grants(role: str, *, collector: str, schema: str | None = None) -> tuple[str, ...]:
    """The PostgreSQL statements that let ``role`` prune the log and nothing else: read
    the records and checkpoints, DELETE records, and write (INSERT, never UPDATE) the
    prune checkpoint that names what it removed, in the same transaction; and that let
    the ``collector``'s role read the prune checkpoints (verify needs them). Run them as
    the tables' owner, after :func:`collector_grants`. The collector's own role stays
    unable to DELETE anything: only this role's connection
    (``audit.retention.database``) can."""
    prefix = _names(role, schema)
    _names(collector, None)
    if role == collector:
        raise UsageError("the role that prunes must not be the collector's: it may DELETE")
    table = f'{prefix}"{prunes.name}"'
    statements = [
        f'REVOKE ALL ON {prefix}"{records.name}", {prefix}"{checkpoints.name}", '
        f'{prefix}"{quarantine.name}", {table} FROM "{role}"'
    ]
    if schema:
        statements.append(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    statements += [
        f'GRANT SELECT, DELETE ON {prefix}"{records.name}" TO "{role}"',
        f'GRANT SELECT ON {prefix}"{checkpoints.name}" TO "{role}"',
        f'GRANT SELECT, INSERT ON {table} TO "{role}"',
        f'REVOKE ALL ON {table} FROM "{collector}"',
        f'GRANT SELECT ON {table} TO "{collector}"',
    ]
    return tuple(statements)
