"""Finding records in the audit log: a :class:`Query` (every filter optional, all of
them must match) and the SQL conditions it stands for.

Filters: a time range (``since`` inclusive, ``until`` exclusive, on the event's OCSF
``time``), the OCSF ``class_uid``, the principal (the user, else the workload's SPIFFE
ID), the decision, the reason code, the trace id, event ids (``uids``: an alert's
events, at most :data:`MAX_LIMIT`); ``after_seq`` pages through the
results (the last seq seen). Results come in seq order (arrival), oldest or newest
first, at most ``limit`` (1 to :data:`MAX_LIMIT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table

from trustmesh.audit.chain import ms
from trustmesh.errors import UsageError

__all__ = ["MAX_LIMIT", "Query", "where"]

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Query:
    since: datetime | None = None
    until: datetime | None = None
    class_uid: int | None = None
    principal: str | None = None
    decision: str | None = None
    reason: str | None = None
    trace_id: str | None = None
    uids: tuple[str, ...] | None = None
    after_seq: int | None = None
    newest_first: bool = False
    limit: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise UsageError(f"limit must be from 1 to {MAX_LIMIT}")
        if self.uids is not None and len(self.uids) > MAX_LIMIT:
            raise UsageError(f"at most {MAX_LIMIT} event ids")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise UsageError("since must not be after until")
        for name in ("since", "until"):
            when = getattr(self, name)
            if when is not None and when.tzinfo is None:
                raise UsageError(f"{name} must be timezone-aware")


def where(query: Query, records: Table) -> list[ColumnElement[Any]]:
    """The conditions on ``records`` (the ledger's table) that ``query`` stands for."""
    c = records.c
    conditions: list[ColumnElement[Any]] = []
    if query.since is not None:
        conditions.append(c.time >= ms(query.since))
    if query.until is not None:
        conditions.append(c.time < ms(query.until))
    for name in ("class_uid", "principal", "decision", "reason", "trace_id"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(c[name] == value)
    if query.uids is not None:
        conditions.append(c.uid.in_(query.uids))
    if query.after_seq is not None:
        conditions.append(
            c.seq < query.after_seq if query.newest_first else c.seq > query.after_seq
        )
    return conditions
