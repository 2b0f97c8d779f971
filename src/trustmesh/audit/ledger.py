"""The audit log's storage: an append-only, hash-chained table of OCSF events, signed
checkpoints, and a quarantine for what could not be stored — on :mod:`trustmesh.store`
(SQLite by default, PostgreSQL at scale).

Tables:

- ``audit_records``: one row per event — ``seq`` (1, 2, 3…), the event's ``uid``
  (unique: a delivery retried after a lost answer is stored once), the search columns
  (:class:`~trustmesh.audit.chain.Fields`), the canonical ``body`` and its link
  ``hash`` (:mod:`trustmesh.audit.chain`);
- ``audit_checkpoints``: the signed checkpoints (also appended to a file outside the
  database: :mod:`trustmesh.audit.checkpoint_file`);
- ``audit_quarantine``: what was refused — when, why, and the raw bytes (the first
  :data:`QUARANTINE_BYTES`, with the size and SHA-256 of the whole). Nothing received
  is dropped silently.

Writers never UPDATE or DELETE, so the collector's PostgreSQL role needs only INSERT
and SELECT (:func:`~trustmesh.audit.ledger_schema.collector_grants`). They are
serialised without a row to update: a transaction-scoped advisory lock on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite; the head of the chain is the row with the highest seq,
read under that lock. Appends go through the driver's executemany with the statement
compiled once (no per-row work in SQLAlchemy): the chain costs little beside them
(``benchmarks/audit_ledger.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trustmesh import crypto
from trustmesh.audit.chain import (
    GENESIS,
    Checkpoint,
    CheckpointPolicy,
    Fields,
    canonical,
    checkpoint_due,
    fields_of,
    link,
    make_checkpoint,
    ms,
)
from trustmesh.audit.checkpoint_file import append_checkpoint, read_checkpoints
from trustmesh.audit.ledger_schema import checkpoints, metadata, quarantine, records
from trustmesh.audit.search import Query, where
from trustmesh.audit.verifier import ChainVerifier, Finding, Record
from trustmesh.errors import StateError, UsageError
from trustmesh.store import SqlStore, append_in_order

__all__ = [
    "MAX_EVENT_BYTES",
    "QUARANTINE_BYTES",
    "Appended",
    "Ledger",
    "Quarantined",
    "Stored",
    "Verification",
]

#: The most of a refused body the quarantine keeps (its size and digest are kept whole).
QUARANTINE_BYTES = 64 * 1024
#: The largest event stored (canonical bytes); a larger one is quarantined.
MAX_EVENT_BYTES = 1 << 20
_IN_CHUNK = 500  # uids per `IN (...)`: far below every driver's limit on parameters
_FIELDS = tuple(f.name for f in dataclasses.fields(Fields))


def _insert_sql(connection: AsyncConnection) -> str:
    """A record's INSERT in the driver's own parameter style, its values in the order
    ``(seq, *fields, body, hash)``."""
    dialect = connection.dialect
    compiled = records.insert().compile(dialect=dialect)
    if tuple(compiled.positiontup or ()) != ("seq", *_FIELDS, "body", "hash"):
        raise StateError("audit_records: the columns are not in the order append writes")
    return str(compiled)


def _lookup(connection: AsyncConnection, uids: list[str]) -> tuple[str, tuple[Any, ...]]:
    """Which of ``uids`` are stored: the query and its parameters, for the driver."""
    if connection.dialect.name == "postgresql":
        return "SELECT uid FROM audit_records WHERE uid = ANY($1::varchar[])", (uids,)
    marks = ",".join("?" * len(uids))  # placeholders only: the uids are parameters
    return f"SELECT uid FROM audit_records WHERE uid IN ({marks})", tuple(uids)  # noqa: S608


@dataclass(frozen=True)
class Appended:
    """What :meth:`Ledger.append` did with a batch: the uids stored (in seq order) and
    those already stored (or repeated in the batch), and the refused events (index in
    the batch, reason: each is in the quarantine); ``head`` is the chain's last seq."""

    stored: tuple[str, ...]
    duplicates: tuple[str, ...]
    quarantined: tuple[tuple[int, str], ...]
    head: int


@dataclass(frozen=True)
class Stored:
    """A record found by :meth:`Ledger.search`."""

    seq: int
    fields: Fields
    event: dict[str, Any]


@dataclass(frozen=True)
class Quarantined:
    id: str
    received: int  # ms since the epoch
    reason: str
    size: int
    digest: bytes  # SHA-256 of the whole body
    raw: bytes  # its first QUARANTINE_BYTES


@dataclass(frozen=True)
class Verification:
    """The outcome of :meth:`Ledger.verify`: the first problem (None: the log is
    intact), the records checked, and how far a signed checkpoint vouches for them."""

    finding: Finding | None
    records: int
    covered: int  # records 1..covered match a signed checkpoint
    checkpoints: int  # checkpoints considered (the database's and the file's)

    @property
    def unsigned(self) -> int:
        """Intact records after the last matching checkpoint (nothing signs them yet)."""
        return self.records - self.covered


def _raw(event: object) -> bytes:
    """The bytes to quarantine for an event that could not be stored."""
    try:
        return json.dumps(event, ensure_ascii=True, default=repr).encode()
    except (TypeError, ValueError, RecursionError):
        return repr(event).encode("ascii", "backslashreplace")


def _quarantine_row(raw: bytes, reason: str, received: int) -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex,
        "received": received,
        "reason": reason[:512],
        "size": len(raw),
        "digest": hashlib.sha256(raw).digest(),
        "raw": raw[:QUARANTINE_BYTES],
    }


def _checkpoint(row: Row[Any]) -> Checkpoint:
    values = row._mapping  # not attributes: a Row's `count` is tuple.count
    return Checkpoint(
        last_seq=values["last_seq"],
        last_hash=bytes(values["last_hash"]),
        count=values["count"],
        time=values["time"],
        previous=bytes(values["previous"]),
        key_id=values["key_id"],
        signature=bytes(values["signature"]),
    )


def _fields(row: Row[Any]) -> Fields:
    return Fields(*(getattr(row, name) for name in _FIELDS))


class Ledger(SqlStore):
    """The audit log on one engine. ``checkpoint_file``: where each checkpoint is also
    appended (None: the database only)."""

    metadata = metadata

    def __init__(self, engine: AsyncEngine, *, checkpoint_file: Path | None = None) -> None:
        super().__init__(engine)
        self.checkpoint_file = checkpoint_file
        self._insert: str | None = None  # compiled for the engine's dialect on first use

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that is the only writer of the log until it ends."""
        async with self.engine.connect() as connection, connection.begin():
            if connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            await append_in_order(connection, records)
            yield connection

    @staticmethod
    async def _head(connection: AsyncConnection) -> tuple[int, bytes]:
        query = select(records.c.seq, records.c.hash).order_by(records.c.seq.desc()).limit(1)
        row = (await connection.execute(query)).first()
        return (0, GENESIS) if row is None else (row.seq, bytes(row.hash))

    @staticmethod
    async def _last_checkpoint(connection: AsyncConnection) -> Checkpoint | None:
        query = select(checkpoints).order_by(checkpoints.c.last_seq.desc()).limit(1)
        row = (await connection.execute(query)).first()
        return None if row is None else _checkpoint(row)

    async def append(self, events: Sequence[Mapping[str, Any]], *, now: datetime) -> Appended:
        """Chain and store a batch in one transaction. An event whose uid is stored
        already (or earlier in the batch) is a duplicate and is skipped; one that is not
        a valid event is quarantined with the reason."""
        received = ms(now)
        batch: dict[str, tuple[Fields, bytes]] = {}
        duplicates: list[str] = []
        refused: list[tuple[int, str, bytes]] = []
        for index, event in enumerate(events):
            try:
                fields, body = fields_of(event), canonical(event)
                if len(body) > MAX_EVENT_BYTES:
                    raise UsageError(f"an event is at most {MAX_EVENT_BYTES} bytes")
            except UsageError as exc:
                refused.append((index, exc.detail, _raw(event)))
                continue
            if fields.uid in batch:
                duplicates.append(fields.uid)
            else:
                batch[fields.uid] = (fields, body)
        async with self._writing() as connection:
            uids = list(batch)
            for start in range(0, len(uids), _IN_CHUNK):
                sql, params = _lookup(connection, uids[start : start + _IN_CHUNK])
                for (uid,) in await connection.exec_driver_sql(sql, params):
                    duplicates.append(uid)
                    del batch[uid]
            seq, prev = await self._head(connection)
            rows = []
            for fields, body in batch.values():
                seq, prev = seq + 1, link(prev, body)
                rows.append((seq, *fields.values(), body, prev))
            if rows:  # the driver's executemany: no per-row work in SQLAlchemy
                if self._insert is None:
                    self._insert = _insert_sql(connection)
                await connection.exec_driver_sql(self._insert, rows)
            if refused:
                await connection.execute(
                    quarantine.insert(),
                    [_quarantine_row(raw, reason, received) for _, reason, raw in refused],
                )
        return Appended(
            stored=tuple(batch),
            duplicates=tuple(duplicates),
            quarantined=tuple((index, reason) for index, reason, _ in refused),
            head=seq,
        )

    async def quarantine(self, raw: bytes, reason: str, *, now: datetime) -> None:
        """Keep what could not even be parsed as an event (bounded), with the reason."""
        row = _quarantine_row(raw, reason, ms(now))
        async with self.engine.begin() as connection:
            await connection.execute(quarantine.insert().values(**row))

    async def quarantined(self, *, limit: int = 100) -> list[Quarantined]:
        """The newest quarantined bodies first."""
        query = (
            select(quarantine)
            .order_by(quarantine.c.received.desc(), quarantine.c.id)
            .limit(max(1, min(limit, 1000)))
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            Quarantined(r.id, r.received, r.reason, r.size, bytes(r.digest), bytes(r.raw))
            for r in rows
        ]

    async def head(self) -> tuple[int, bytes]:
        """The chain's last seq and hash ((0, GENESIS) when empty)."""
        async with self.engine.connect() as connection:
            return await self._head(connection)

    async def checkpoint(
        self,
        key: crypto.SigningKey,
        *,
        now: datetime,
        policy: CheckpointPolicy | None = None,
    ) -> Checkpoint | None:
        """Sign the head, store the checkpoint, then append it to the checkpoint file.
        None when there is nothing new to sign (or, with ``policy``, it is not due)."""
        async with self._writing() as connection:  # one signer at a time: no fork
            head_seq, head_hash = await self._head(connection)
            last = await self._last_checkpoint(connection)
            signed = 0 if last is None else last.last_seq
            if head_seq <= signed or (
                policy is not None
                and not checkpoint_due(policy, head_seq=head_seq, last=last, now=now)
            ):
                return None
            made = make_checkpoint(last, last_seq=head_seq, last_hash=head_hash, now=now, key=key)
            values = {c.name: getattr(made, c.name) for c in checkpoints.c}
            await connection.execute(checkpoints.insert().values(**values))
        if self.checkpoint_file is not None:
            append_checkpoint(self.checkpoint_file, made)
        return made

    async def newest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the highest seq (None before the first)."""
        async with self.engine.connect() as connection:
            return await self._last_checkpoint(connection)

    async def checkpoints(self) -> list[Checkpoint]:
        async with self.engine.connect() as connection:
            query = select(checkpoints).order_by(checkpoints.c.last_seq)
            return [_checkpoint(row) for row in await connection.execute(query)]

    async def search(self, query: Query) -> list[Stored]:
        """The records that match every filter of ``query``, in seq order."""
        order = records.c.seq.desc() if query.newest_first else records.c.seq
        statement = (
            select(records.c.seq, records.c.body, *(records.c[n] for n in _FIELDS))
            .where(*where(query, records))
            .order_by(order)
            .limit(query.limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [Stored(row.seq, _fields(row), json.loads(row.body)) for row in rows]

    async def verify(
        self,
        keys: Mapping[str, bytes],
        *,
        checkpoint_file: Path | None = None,
        external: Sequence[Checkpoint] | None = None,
        page: int = 2000,
    ) -> Verification:
        """Check the whole log, ``page`` records at a time, against the stored
        checkpoints, those in ``checkpoint_file`` and those given in ``external`` (a
        verifier's own copy; ``keys``: key id → raw Ed25519 public key)."""
        if checkpoint_file is not None:
            external = [*(external or ()), *read_checkpoints(checkpoint_file)]
        stored = await self.checkpoints()
        verifier = ChainVerifier(keys, stored, external=external)
        columns = (records.c.seq, records.c.body, records.c.hash, *(records.c[n] for n in _FIELDS))
        after = None
        async with self.engine.connect() as connection:
            while True:
                statement = select(*columns).order_by(records.c.seq).limit(page)
                if after is not None:
                    statement = statement.where(records.c.seq > after)
                rows = (await connection.execute(statement)).all()
                found = verifier.feed(
                    Record(r.seq, bytes(r.body), bytes(r.hash), _fields(r)) for r in rows
                )
                if found is not None or len(rows) < page:
                    break
                after = rows[-1].seq
        return Verification(
            finding=verifier.finish(),
            records=verifier.records,
            covered=verifier.covered,
            checkpoints=len(stored) + len(external or ()),
        )
