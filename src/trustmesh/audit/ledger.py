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
  is dropped silently;
- ``audit_prunes``: the signed prune checkpoints of the records retention removed
  (:meth:`Ledger.prune`, :mod:`trustmesh.audit.retention`).

Writers never UPDATE, and only :meth:`Ledger.prune` DELETEs — through its own engine
(``prune_engine``; on PostgreSQL another role's, see
:func:`~trustmesh.audit.ledger_schema.prune_grants`) — so the collector's PostgreSQL
role needs only INSERT and SELECT
(:func:`~trustmesh.audit.ledger_schema.collector_grants`). They are
serialised without a row to update: a transaction-scoped advisory lock on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite; the head of the chain is the row with the highest seq,
read under that lock. Appends go through the driver's executemany with the statement
compiled once (no per-row work in SQLAlchemy): the chain costs little beside them
(``benchmarks/audit_ledger.py``). On SQLite an append and a checkpoint are each one call
in the connection's own thread (:func:`~trustmesh.audit._writer.in_sqlite_thread`: lock,
duplicate check, head, chain, inserts), not an await per statement; the steps that
decide are the same on PostgreSQL (:mod:`trustmesh.audit.ledger_writes`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Row, and_, bindparam, func, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from trustmesh import crypto
from trustmesh.audit._writer import in_sqlite_thread, sqlite_writer
from trustmesh.audit.chain import (
    GENESIS,
    PRUNE_CHUNK,
    Checkpoint,
    CheckpointPolicy,
    Fields,
    PruneCheckpoint,
    make_prune_checkpoint,
    ms,
)
from trustmesh.audit.checkpoint_file import append_checkpoint, read_checkpoints
from trustmesh.audit.ledger_schema import (
    checkpoints,
    metadata,
    prune_tables,
    prunes,
    quarantine,
    records,
)
from trustmesh.audit.ledger_writes import (
    HEAD,
    IN_CHUNK,
    MAX_EVENT_BYTES,
    QUARANTINE_BYTES,
    append_sqlite,
    chained,
    checkpoint_sqlite,
    prepare,
    quarantine_row,
    signed_head,
)
from trustmesh.audit.retention import Pruned, Retention
from trustmesh.audit.search import Query, where
from trustmesh.audit.verifier import ChainVerifier, Finding, Record
from trustmesh.errors import StateError
from trustmesh.store import SqliteLayout, SqlStore, append_in_order, create_tables

__all__ = [
    "LAYOUT",
    "MAX_EVENT_BYTES",
    "QUARANTINE_BYTES",
    "Appended",
    "Ledger",
    "Quarantined",
    "Stored",
    "Verification",
]

_FIELDS = Fields._fields
_NO_PRIVILEGE = "42501"  # PostgreSQL's insufficient_privilege
#: The log's SQLite file: 16 KiB pages (a record is ~1.5 KB: a batch writes a quarter of
#: the pages, each one ``pwrite`` to the WAL and one more at its checkpoint) and a
#: 16 MiB page cache (the default 2 MB spilled a batch's pages mid-transaction and read
#: index pages back). Measured on a log of 200,000 records, 50,000 events in batches of
#: 500: 1.9 → 0.6 ``pwrite`` and 0.66 → 0.11 ``pread`` an event, the database thread's
#: CPU ~3 µs an event less (benchmarks/audit.py).
LAYOUT: Final = SqliteLayout(page_size=16384, cache_kib=16384)
log = logging.getLogger("trustmesh.audit")


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
    return f"SELECT uid FROM audit_records WHERE uid IN ({marks})", tuple(uids)  # noqa: S608  # nosec B608 # only '?' marks are formatted in; the uids are bound


@dataclass(frozen=True)
class Appended:
    """What :meth:`Ledger.append` did with a batch: the uids stored (in seq order) and
    those already stored (or repeated in the batch), and the refused events (index in
    the batch, reason: each is in the quarantine); ``head`` is the chain's last seq."""

    stored: tuple[str, ...]
    duplicates: tuple[str, ...]
    quarantined: tuple[tuple[int, str], ...]
    head: int
    #: the index in the batch of each stored event, in seq order (as ``stored``)
    stored_at: tuple[int, ...] = ()


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
    pruned: int = 0  # removed seqs a valid prune checkpoint names (not in ``records``)

    @property
    def unsigned(self) -> int:
        """Intact records after the last matching checkpoint (nothing signs them yet;
        ``covered`` counts the pruned seqs under it too)."""
        return self.records + self.pruned - self.covered


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
    appended (None: the database only). ``prune_engine``: the connection that may
    DELETE records (:meth:`prune`): on SQLite the same file; None: pruning is off."""

    metadata = metadata

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        checkpoint_file: Path | None = None,
        prune_engine: AsyncEngine | None = None,
    ) -> None:
        super().__init__(engine)
        self.checkpoint_file = checkpoint_file
        self.prune_engine = prune_engine
        self._insert: str | None = None  # compiled for the engine's dialect on first use

    async def create(self) -> None:
        await super().create()
        await create_tables(self.engine, prune_tables)

    async def close(self) -> None:
        if self.prune_engine is not None and self.prune_engine is not self.engine:
            await self.prune_engine.dispose()
        await super().close()

    @contextlib.asynccontextmanager
    async def _writing(self, engine: AsyncEngine | None = None) -> AsyncIterator[AsyncConnection]:
        """A transaction that is the only writer of the log until it ends (on
        ``engine``, the ledger's by default); on SQLite, the collector's writers queue
        for the file in the event loop (:mod:`trustmesh.audit._writer`)."""
        engine = engine or self.engine
        async with (
            sqlite_writer(engine),
            engine.connect() as connection,
            connection.begin(),
        ):
            if connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            await append_in_order(connection, records)
            yield connection

    @staticmethod
    async def _head(connection: AsyncConnection) -> tuple[int, bytes]:
        # the driver's own SQL: no statement built and looked up in the cache per batch
        row = (await connection.exec_driver_sql(HEAD)).first()
        if row is None:
            return 0, GENESIS
        seq, hash_ = tuple(row)
        return int(seq), bytes(hash_)

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
        batch, duplicates, refused = prepare(events)
        quarantined = [quarantine_row(raw, reason, received) for _, reason, raw in refused]
        if self.engine.dialect.name == "sqlite":  # the whole transaction in one call
            async with sqlite_writer(self.engine), self.engine.begin() as connection:
                if self._insert is None:
                    self._insert = _insert_sql(connection)
                stored, seq = await in_sqlite_thread(
                    connection, append_sqlite, self._insert, batch, quarantined
                )
            duplicates.extend(stored)
            for uid in stored:
                del batch[uid]
        else:
            async with self._writing() as connection:
                uids = list(batch)
                for start in range(0, len(uids), IN_CHUNK):
                    sql, params = _lookup(connection, uids[start : start + IN_CHUNK])
                    for (uid,) in await connection.exec_driver_sql(sql, params):
                        duplicates.append(uid)
                        del batch[uid]
                seq, prev = await self._head(connection)
                rows = chained(batch, seq, prev)
                if rows:  # the driver's executemany: no per-row work in SQLAlchemy
                    if self._insert is None:
                        self._insert = _insert_sql(connection)
                    await connection.exec_driver_sql(self._insert, rows)
                    seq = rows[-1][0]
                if quarantined:
                    await connection.execute(quarantine.insert(), quarantined)
        return Appended(
            stored=tuple(batch),
            duplicates=tuple(duplicates),
            quarantined=tuple((index, reason) for index, reason, _ in refused),
            head=seq,
            stored_at=tuple(index for _, _, index in batch.values()),
        )

    async def quarantine(self, raw: bytes, reason: str, *, now: datetime) -> None:
        """Keep what could not even be parsed as an event (bounded), with the reason."""
        row = quarantine_row(raw, reason, ms(now))
        async with sqlite_writer(self.engine), self.engine.begin() as connection:
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
        made: Checkpoint | None
        if self.engine.dialect.name == "sqlite":  # the whole transaction in one call
            async with sqlite_writer(self.engine), self.engine.begin() as connection:
                made = await in_sqlite_thread(connection, checkpoint_sqlite, key, now, policy)
        else:
            async with self._writing() as connection:  # one signer at a time: no fork
                head = await self._head(connection)
                last = await self._last_checkpoint(connection)
                made = signed_head(head, last, key, now, policy)
                if made is not None:
                    values = {c.name: getattr(made, c.name) for c in checkpoints.c}
                    await connection.execute(checkpoints.insert().values(**values))
        if made is None:
            return None
        if self.checkpoint_file is not None:
            append_checkpoint(self.checkpoint_file, made)
        return made

    async def newest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the highest seq (None before the first)."""
        async with self.engine.connect() as connection:
            return await self._last_checkpoint(connection)

    async def key_use(self, key_id: str) -> tuple[int, int] | None:
        """When ``key_id`` signed its first and its latest stored checkpoint (epoch ms),
        None before it signed any: the key's age as the log itself evidences it (a
        file's date can be set; a checkpoint's time is under its signature)."""
        column = checkpoints.c.time
        query = select(func.min(column), func.max(column)).where(checkpoints.c.key_id == key_id)
        async with self.engine.connect() as connection:
            first, last = (await connection.execute(query)).one()
        return None if first is None else (int(first), int(last))

    async def checkpoints(self) -> list[Checkpoint]:
        async with self.engine.connect() as connection:
            query = select(checkpoints).order_by(checkpoints.c.last_seq)
            return [_checkpoint(row) for row in await connection.execute(query)]

    async def prune_checkpoints(self) -> list[PruneCheckpoint]:
        """The stored prune checkpoints, by their first seq (StateError: one unreadable).

        A PostgreSQL role not granted SELECT on them (a deployment made before
        retention, without :func:`~trustmesh.audit.ledger_schema.prune_grants`) reads
        none, with a warning: fail-safe — a record retention removed then shows as
        deleted, and nothing deleted can show as pruned."""
        try:
            async with self.engine.connect() as connection:
                query = select(prunes.c.line).order_by(prunes.c.first_seq)
                lines = [bytes(row.line) for row in await connection.execute(query)]
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != _NO_PRIVILEGE:
                raise
            log.warning(
                "audit: this role may not read %s (run prune_grants): records removed by "
                "retention will show as deleted",
                prunes.name,
            )
            return []
        return [PruneCheckpoint.from_line(line.rstrip(b"\n")) for line in lines]

    async def prune(
        self,
        key: crypto.SigningKey,
        retention: Retention,
        *,
        now: datetime,
        dry_run: bool = False,
        limit: int = 10_000,
    ) -> Pruned:
        """Remove up to ``limit`` records past ``retention`` (the oldest first), under
        prune checkpoints signed with ``key`` and written in the same transaction, then
        appended to the checkpoint file; ``dry_run``: count them all, remove nothing.
        What is past retention: see :mod:`trustmesh.audit.retention`. StateError when
        pruning is off (no ``prune_engine``)."""
        if self.prune_engine is None:
            raise StateError("pruning is off: no connection may delete audit records")
        done = Pruned(dry_run=dry_run, rule=retention.rule)
        made: list[PruneCheckpoint] = []
        async with self._writing(self.prune_engine) as connection:
            head_seq, _ = await self._head(connection)
            last = await self._last_checkpoint(connection)
            if last is None or not retention.enabled:
                return done
            condition = await _past_retention(
                connection, retention, now=now, top=min(last.last_seq, head_seq - 1)
            )
            if condition is None:
                return done
            if dry_run:
                query = (
                    select(records.c.class_uid, func.count(), func.min(records.c.seq))
                    .add_columns(func.max(records.c.seq))
                    .where(condition)
                    .group_by(records.c.class_uid)
                )
                rows = (await connection.execute(query)).all()
                return Pruned(
                    dry_run=True,
                    rule=retention.rule,
                    removed={row[0]: row[1] for row in rows},
                    first=min((row[2] for row in rows), default=None),
                    last=max((row[3] for row in rows), default=None),
                )
            query = (
                select(records.c.seq, records.c.class_uid, records.c.hash)
                .where(condition)
                .order_by(records.c.seq)
                .limit(max(1, limit))
            )
            rows = (await connection.execute(query)).all()
            if not rows:
                return done
            for start in range(0, len(rows), PRUNE_CHUNK):
                chunk = rows[start : start + PRUNE_CHUNK]
                cp = make_prune_checkpoint(
                    [(row.seq, bytes(row.hash)) for row in chunk],
                    rule=retention.rule,
                    covered=last.last_seq,
                    now=now,
                    key=key,
                )
                await connection.execute(
                    prunes.insert().values(
                        first_seq=cp.first_seq,
                        last_seq=cp.last_seq,
                        time=cp.time,
                        line=cp.to_line(),
                    )
                )
                made.append(cp)
            await connection.execute(
                records.delete().where(records.c.seq == bindparam("pruned")),
                [{"pruned": row.seq} for row in rows],
            )
            removed: dict[int, int] = {}
            for row in rows:
                removed[row.class_uid] = removed.get(row.class_uid, 0) + 1
            done = Pruned(
                dry_run=False,
                rule=retention.rule,
                removed=removed,
                first=rows[0].seq,
                last=rows[-1].seq,
                checkpoints=len(made),
            )
        if self.checkpoint_file is not None:  # after the commit, as a checkpoint is
            for cp in made:
                append_checkpoint(self.checkpoint_file, cp)
        return done

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

    async def recent(
        self, *, since_ms: int, max_records: int, page: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The events of the newest ``max_records`` records whose event time is at least
        ``since_ms``, in seq order, a page at a time."""
        head, _ = await self.head()
        after = max(head - max_records, 0)
        while True:
            statement = (
                select(records.c.seq, records.c.body)
                .where(records.c.seq > after, records.c.time >= since_ms)
                .order_by(records.c.seq)
                .limit(page)
            )
            async with self.engine.connect() as connection:
                rows = (await connection.execute(statement)).all()
            if not rows:
                return
            after = rows[-1].seq
            yield [json.loads(row.body) for row in rows]

    async def verify(
        self,
        keys: Mapping[str, bytes],
        *,
        checkpoint_file: Path | None = None,
        external: Sequence[Checkpoint | PruneCheckpoint] | None = None,
        page: int = 2000,
    ) -> Verification:
        """Check the whole log, ``page`` records at a time, against the stored
        checkpoints and prune checkpoints, those in ``checkpoint_file`` and those given
        in ``external`` (a verifier's own copy; ``keys``: key id → raw Ed25519 public
        key)."""
        if checkpoint_file is not None:
            external = [*(external or ()), *read_checkpoints(checkpoint_file)]
        stored: list[Checkpoint | PruneCheckpoint] = [*await self.checkpoints()]
        stored += await self.prune_checkpoints()
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
            pruned=verifier.pruned,
        )


async def _past_retention(
    connection: AsyncConnection, retention: Retention, *, now: datetime, top: int
) -> ColumnElement[bool] | None:
    """Which records are past ``retention``: per class, those covered by a checkpoint
    signed at least its age before ``now``, never after seq ``top`` (None: none are)."""
    conditions: list[ColumnElement[bool]] = []
    listed = list(retention.classes)
    for uid, age in retention.ages():
        query = select(func.max(checkpoints.c.last_seq)).where(checkpoints.c.time <= ms(now - age))
        bound = min((await connection.execute(query)).scalar() or 0, top)
        if bound < 1:
            continue
        if uid is not None:
            conditions.append(and_(records.c.class_uid == uid, records.c.seq <= bound))
        elif listed:
            conditions.append(and_(records.c.class_uid.not_in(listed), records.c.seq <= bound))
        else:
            conditions.append(records.c.seq <= bound)
    return or_(*conditions) if conditions else None
