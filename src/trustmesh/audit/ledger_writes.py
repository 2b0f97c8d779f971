"""What an append and a checkpoint write to the audit log, apart from the connection
they write through (:mod:`trustmesh.audit.ledger` holds the log): the pure steps — a
batch checked and encoded (:func:`prepare`), chained after the head (:func:`chained`),
the head signed when a checkpoint is due (:func:`signed_head`), what a refused event
leaves in the quarantine (:func:`quarantine_row`) — and on SQLite each transaction as
one call in the connection's own thread (:func:`append_sqlite`,
:func:`checkpoint_sqlite`; :func:`~trustmesh.audit._writer.in_sqlite_thread` runs
them). PostgreSQL's path runs the same steps, a statement at a time."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

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
)
from trustmesh.audit.ledger_schema import checkpoints, quarantine, records
from trustmesh.errors import UsageError

__all__ = [
    "CHECKPOINT_COLUMNS",
    "HEAD",
    "IN_CHUNK",
    "MAX_EVENT_BYTES",
    "QUARANTINE_BYTES",
    "Batch",
    "append_sqlite",
    "chained",
    "checkpoint_sqlite",
    "prepare",
    "quarantine_row",
    "raw_bytes",
    "signed_head",
]

#: The most of a refused body the quarantine keeps (its size and digest are kept whole).
QUARANTINE_BYTES = 64 * 1024
#: The largest event stored (canonical bytes); a larger one is quarantined.
MAX_EVENT_BYTES = 1 << 20
IN_CHUNK = 500  # uids per `IN (...)`: far below every driver's limit on parameters

HEAD = f"SELECT seq, hash FROM {records.name} ORDER BY seq DESC LIMIT 1"  # noqa: S608  # nosec B608 # the table name is a module constant
CHECKPOINT_COLUMNS = ("last_seq", "last_hash", "count", "time", "previous", "key_id", "signature")
_LAST_CHECKPOINT = (
    f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM {checkpoints.name} "  # noqa: S608  # nosec B608 # table and column names are module constants
    "ORDER BY last_seq DESC LIMIT 1"
)
_INSERT_CHECKPOINT = (
    f"INSERT INTO {checkpoints.name} ({', '.join(CHECKPOINT_COLUMNS)}) "  # noqa: S608  # nosec B608 # table and column names are module constants; values are bound
    f"VALUES ({', '.join('?' * len(CHECKPOINT_COLUMNS))})"
)
_QUARANTINE_COLUMNS = ("id", "received", "reason", "size", "digest", "raw")
_QUARANTINE_SQL = (
    f"INSERT INTO {quarantine.name} ({', '.join(_QUARANTINE_COLUMNS)}) "  # noqa: S608  # nosec B608 # table and column names are module constants; values are bound
    f"VALUES ({', '.join('?' * len(_QUARANTINE_COLUMNS))})"
)


#: A batch to append: uid → (its columns, its canonical bytes, its index in the batch).
Batch = dict[str, tuple[Fields, bytes, int]]


def prepare(
    events: Sequence[Mapping[str, Any]],
) -> tuple[Batch, list[str], list[tuple[int, str, bytes]]]:
    """A batch's events checked and encoded (pure): the valid ones by uid (the first of
    a uid: a later one is a duplicate), the uids repeated in the batch, and the refused
    (index, reason, raw bytes to quarantine)."""
    batch: Batch = {}
    duplicates: list[str] = []
    refused: list[tuple[int, str, bytes]] = []
    for index, event in enumerate(events):
        try:
            fields, body = fields_of(event), canonical(event)
            if len(body) > MAX_EVENT_BYTES:
                raise UsageError(f"an event is at most {MAX_EVENT_BYTES} bytes")
        except UsageError as exc:
            refused.append((index, exc.detail, raw_bytes(event)))
            continue
        if fields.uid in batch:
            duplicates.append(fields.uid)
        else:
            batch[fields.uid] = (fields, body, index)
    return batch, duplicates, refused


def chained(batch: Batch, seq: int, prev: bytes) -> list[tuple[Any, ...]]:
    """The rows of ``batch`` after the head (``seq``, ``prev``), each linked to the one
    before: ``(seq, *fields, body, hash)``."""
    rows = []
    for fields, body, _ in batch.values():
        seq, prev = seq + 1, link(prev, body)
        rows.append((seq, *fields, body, prev))
    return rows


def append_sqlite(
    native: sqlite3.Connection,
    insert: str,
    batch: Batch,
    quarantined: list[dict[str, object]],
) -> tuple[list[str], int]:
    """The append's transaction on SQLite, in the connection's thread
    (:func:`~trustmesh.audit._writer.in_sqlite_thread`): the write lock taken first
    (``BEGIN IMMEDIATE``: the head read next is the head written after), the uids
    already stored looked up, the rest chained after the head and inserted, the refused
    kept. The stored uids and the head's seq; ``batch`` is only read (the event loop
    owns it)."""
    native.execute("BEGIN IMMEDIATE")
    uids = list(batch)
    stored: list[str] = []
    for start in range(0, len(uids), IN_CHUNK):
        part = uids[start : start + IN_CHUNK]
        marks = ",".join("?" * len(part))  # placeholders only: the uids are parameters
        sql = f"SELECT uid FROM audit_records WHERE uid IN ({marks})"  # noqa: S608  # nosec B608 # only '?' marks are formatted in; the uids are bound
        stored.extend(uid for (uid,) in native.execute(sql, part))
    head = native.execute(HEAD).fetchone()
    seq, prev = (0, GENESIS) if head is None else (int(head[0]), bytes(head[1]))
    known = set(stored)
    fresh = {uid: item for uid, item in batch.items() if uid not in known} if known else batch
    rows = chained(fresh, seq, prev)
    if rows:
        native.executemany(insert, rows)
        seq = rows[-1][0]
    if quarantined:
        native.executemany(
            _QUARANTINE_SQL, [tuple(r[c] for c in _QUARANTINE_COLUMNS) for r in quarantined]
        )
    return stored, seq


def signed_head(
    head: tuple[int, bytes],
    last: Checkpoint | None,
    key: crypto.SigningKey,
    now: datetime,
    policy: CheckpointPolicy | None,
) -> Checkpoint | None:
    """The checkpoint of ``head`` (seq, hash) after ``last``; None when nothing is new
    to sign (or, with ``policy``, it is not due)."""
    head_seq, head_hash = head
    signed = 0 if last is None else last.last_seq
    if head_seq <= signed or (
        policy is not None and not checkpoint_due(policy, head_seq=head_seq, last=last, now=now)
    ):
        return None
    return make_checkpoint(last, last_seq=head_seq, last_hash=head_hash, now=now, key=key)


def checkpoint_sqlite(
    native: sqlite3.Connection,
    key: crypto.SigningKey,
    now: datetime,
    policy: CheckpointPolicy | None,
) -> Checkpoint | None:
    """:meth:`Ledger.checkpoint`'s transaction on SQLite, in the connection's thread: the
    write lock first (one signer at a time: no fork), the head and the last checkpoint,
    and the new one stored when one is due."""
    native.execute("BEGIN IMMEDIATE")
    head = native.execute(HEAD).fetchone()
    row = native.execute(_LAST_CHECKPOINT).fetchone()
    last = None
    if row is not None:
        seq, last_hash, count, time, previous, key_id, signature = row
        last = Checkpoint(
            seq, bytes(last_hash), count, time, bytes(previous), key_id, bytes(signature)
        )
    made = signed_head(
        (0, GENESIS) if head is None else (int(head[0]), bytes(head[1])), last, key, now, policy
    )
    if made is not None:
        native.execute(
            _INSERT_CHECKPOINT, tuple(getattr(made, name) for name in CHECKPOINT_COLUMNS)
        )
    return made


def raw_bytes(event: object) -> bytes:
    """The bytes to quarantine for an event that could not be stored."""
    try:
        return json.dumps(event, ensure_ascii=True, default=repr).encode()
    except (TypeError, ValueError, RecursionError):
        return repr(event).encode("ascii", "backslashreplace")


def quarantine_row(raw: bytes, reason: str, received: int) -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex,
        "received": received,
        "reason": reason[:512],
        "size": len(raw),
        "digest": hashlib.sha256(raw).digest(),
        "raw": raw[:QUARANTINE_BYTES],
    }
