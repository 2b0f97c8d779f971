"""Where the collector keeps the alerts detection raised — in the audit database, INSERT
and SELECT only, so its PostgreSQL role stays as narrow as the ledger's
(:func:`alert_grants`) — and the OCSF Detection Finding that records one (:func:`finding`).

Tables:

- ``audit_alerts``: one row per alert — ``id`` (1, 2, 3…: a feed, read with
  ``after_id``), the alert's ``uid`` (unique), rule, title, level, kind, group (JSON, and
  the SHA-256 of its canonical form, ``group_key``, to find it by), measure, window
  (epoch ms), the actions it asked for, when it was stored and the rule's file;
- ``audit_alert_events``: which events (by OCSF ``metadata.uid``) each alert is about.

One alert per rule and group per window: :meth:`AlertStore.add` stores an alert only
when no alert has its uid and no alert of the same rule and group has a window that
overlaps its own (both ends included, as the detector's dedup silences). A repeat
stores nothing but links the events the stored alert did not name yet. Appends are
serialised (:func:`~trustmesh.store.append_in_order`; ``BEGIN IMMEDIATE`` on SQLite),
so two collectors never store the same alert twice and ids commit in order. On SQLite
an add is one call in the connection's thread, in plain SQL; what it decides
(:func:`_plan`, :func:`_links`, :func:`_pending`) is the same on PostgreSQL.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import ipaddress
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from trustmesh.audit._writer import in_sqlite_thread, sqlite_writer
from trustmesh.audit.chain import ms
from trustmesh.audit.detection import Alert
from trustmesh.errors import StateError, UsageError
from trustmesh.events import AttributeValue, Endpoint, Event, Recorder, Severity
from trustmesh.reasons import Activity
from trustmesh.store import SqlStore, append_in_order

__all__ = ["LEVELS", "AlertStore", "StoredAlert", "alert_grants", "finding", "metadata"]

#: Sigma's levels, lowest first.
LEVELS: Final = ("informational", "low", "medium", "high", "critical")
_SEVERITY: Final = {
    "informational": Severity.INFORMATIONAL,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite: the rowid itself
_IN_CHUNK = 500  # values per `IN (...)`
_MAX_GROUP_ATTRIBUTES = 20  # of an event's 32

metadata = MetaData()
alerts = Table(
    "audit_alerts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("uid", String(64), nullable=False, unique=True),
    Column("rule_id", String(256), nullable=False),
    Column("title", String(512), nullable=False),
    Column("level", String(16), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("group", JSON, nullable=False),
    Column("group_key", String(64), nullable=False),  # SHA-256 of the canonical group
    Column("measure", BigInteger, nullable=False),
    Column("window_start", BigInteger, nullable=False),  # ms since the epoch
    Column("window_end", BigInteger, nullable=False),
    Column("actions", JSON, nullable=False),
    Column("stored_at", BigInteger, nullable=False),
    Column("rule_path", String(1024), nullable=False),
    Index("audit_alerts_rule_group", "rule_id", "group_key", "window_start"),
    Index("audit_alerts_window_end", "window_end"),
    sqlite_autoincrement=True,  # a feed: an id is never handed out twice
)
alert_events = Table(
    "audit_alert_events",
    metadata,
    Column("alert_id", _ID, nullable=False),
    Column("event_uid", String(64), nullable=False),
    Column("position", Integer, nullable=False),  # the order they were linked in
    PrimaryKeyConstraint("alert_id", "event_uid"),
    Index("audit_alert_events_event", "event_uid"),
)


@dataclass(frozen=True)
class StoredAlert:
    """An alert as stored: its ``id`` in the feed, when it was stored (epoch ms) and
    every event linked to it (those of repeats included), in the order they came."""

    id: int
    uid: str
    rule_id: str
    title: str
    level: str
    kind: str
    group: Mapping[str, Any]
    measure: int
    window_start: int
    window_end: int
    actions: tuple[Mapping[str, Any], ...]
    stored_at: int
    rule_path: str
    event_uids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """:meth:`Alert.to_dict <trustmesh.audit.detection.Alert.to_dict>`'s shape,
        with ``id`` and ``stored_at``."""
        return {
            "id": self.id,
            "uid": self.uid,
            "rule_id": self.rule_id,
            "title": self.title,
            "level": self.level,
            "kind": self.kind,
            "group": dict(self.group),
            "event_uids": list(self.event_uids),
            "measure": self.measure,
            "window": {"start": self.window_start, "end": self.window_end},
            "actions": [dict(a) for a in self.actions],
            "rule_path": self.rule_path,
            "stored_at": self.stored_at,
        }


def alert_grants(role: str, *, schema: str | None = None) -> tuple[str, ...]:
    """The PostgreSQL statements that let ``role`` (the collector) add alerts and read
    them, and nothing else: SELECT and INSERT on both tables, and USAGE on the id
    sequence (nextval: no setval, which needs UPDATE). Run them as the tables' owner."""
    for name in (role, schema):
        if name is not None and not _ROLE.fullmatch(name):
            raise UsageError("a role or schema name is 1 to 63 lowercase letters, digits or _")
    prefix = f'"{schema}".' if schema else ""
    names = ", ".join(f'{prefix}"{t.name}"' for t in metadata.sorted_tables)
    statements = [f'REVOKE ALL ON {names} FROM "{role}"']
    if schema:
        statements.append(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    statements.append(f'GRANT SELECT, INSERT ON {names} TO "{role}"')
    statements.append(f'GRANT USAGE ON SEQUENCE {prefix}"audit_alerts_id_seq" TO "{role}"')
    return tuple(statements)


def _group_key(group: Mapping[str, Any]) -> str:
    text = json.dumps(sorted(group.items()), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _row(alert: Alert, stored_at: int) -> dict[str, Any]:
    data = alert.to_dict()
    return {
        "uid": alert.uid[:64],
        "rule_id": alert.rule_id[:256],
        "title": alert.title[:512],
        "level": alert.level[:16],
        "kind": alert.kind[:32],
        "group": data["group"],
        "group_key": _group_key(data["group"]),
        "measure": alert.measure,
        "window_start": alert.window_start,
        "window_end": alert.window_end,
        "actions": data["actions"],
        "stored_at": stored_at,
        "rule_path": alert.rule_path[:1024],
    }


def _overlaps(row: Mapping[str, Any], start: int, end: int) -> bool:
    return bool(row["window_start"] <= end and start <= row["window_end"])


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


#: The columns of a stored alert that decide whether a new one repeats it.
_FOUND: Final = ("id", "uid", "rule_id", "group_key", "window_start", "window_end")
#: The columns :func:`_row` fills, in the order the SQLite INSERT names them.
_INSERTED: Final = (
    "uid",
    "rule_id",
    "title",
    "level",
    "kind",
    "group",
    "group_key",
    "measure",
    "window_start",
    "window_end",
    "actions",
    "stored_at",
    "rule_path",
)
_JSON_COLUMNS: Final = frozenset({"group", "actions"})
_QUOTED: Final = ", ".join('"' + c + '"' for c in _INSERTED)  # "group" is a keyword
_INSERT_ALERT: Final = (
    f"INSERT INTO {alerts.name} ({_QUOTED}) "  # noqa: S608  # nosec B608 # table and column names are module constants; values are bound
    f"VALUES ({', '.join('?' * len(_INSERTED))})"
)
_INSERT_LINK: Final = (
    f"INSERT INTO {alert_events.name} (alert_id, event_uid, position) VALUES (?, ?, ?)"  # noqa: S608  # nosec B608 # the table name is a module constant; values are bound
)


def _plan(
    rows: Sequence[dict[str, Any]],
    named: Sequence[tuple[str, ...]],
    found: Iterable[dict[str, Any]],
) -> tuple[builtins.list[dict[str, Any]], builtins.list[tuple[dict[str, Any], tuple[str, ...]]]]:
    """Which of ``rows`` (the alerts' rows; ``named``: each one's event uids) are new,
    given the stored alerts ``found`` that share a uid or a rule and group with one of
    them: the new rows, in order, and for every row the alert its events go to (a
    stored one it repeats, an earlier new one, or itself). Pure."""
    known: dict[str, dict[str, Any]] = {}  # uid → stored row (id, window…)
    by_group: dict[tuple[str, str], builtins.list[dict[str, Any]]] = {}
    for row in found:
        known[row["uid"]] = row
        by_group.setdefault((row["rule_id"], row["group_key"]), []).append(row)
    new: builtins.list[dict[str, Any]] = []  # rows to insert, in order
    targets: builtins.list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for row, event_uids in zip(rows, named, strict=True):
        target = known.get(row["uid"])
        if target is None:
            target = next(
                (
                    other
                    for other in by_group.get((row["rule_id"], row["group_key"]), ())
                    if _overlaps(other, row["window_start"], row["window_end"])
                ),
                None,
            )
        if target is None:
            target = row
            known[row["uid"]] = target
            by_group.setdefault((row["rule_id"], row["group_key"]), []).append(target)
            new.append(target)
        targets.append((target, event_uids))
    return new, targets


def _links(
    targets: Sequence[tuple[dict[str, Any], tuple[str, ...]]],
) -> dict[int, builtins.list[str]]:
    """Alert id → the event uids to link to it, in order (every target has its id)."""
    links: dict[int, builtins.list[str]] = {}
    for target, named in targets:
        links.setdefault(target["id"], []).extend(named)
    return links


def _pending(
    links: Mapping[int, Sequence[str]], linked: dict[int, builtins.list[str]]
) -> builtins.list[dict[str, Any]]:
    """The links to insert: each event of ``links`` not linked to its alert yet, at the
    next position. ``linked`` (alert id → the uids linked, in order) is brought up to
    date."""
    pending = []
    for alert_id, event_uids in links.items():
        have = linked.setdefault(alert_id, [])
        seen = set(have)
        for uid in event_uids:
            if uid not in seen:
                seen.add(uid)
                pending.append({"alert_id": alert_id, "event_uid": uid[:64], "position": len(have)})
                have.append(uid)
    return pending


def _add_sqlite(
    native: sqlite3.Connection,
    rows: Sequence[dict[str, Any]],
    named: Sequence[tuple[str, ...]],
) -> tuple[builtins.list[dict[str, Any]], dict[int, builtins.list[str]]]:
    """:meth:`AlertStore.add`'s transaction on SQLite, in the connection's thread
    (:func:`~trustmesh.audit._writer.in_sqlite_thread`), with the same plan
    (:func:`_plan`, :func:`_links`, :func:`_pending`): the new rows with their ids, and
    each linked alert's event uids. JSON columns written as SQLAlchemy's JSON type
    writes them (``json.dumps``), so the store reads them back alike."""
    native.execute("BEGIN IMMEDIATE")
    select_found = f"SELECT {', '.join(_FOUND)} FROM {alerts.name} WHERE "  # noqa: S608  # nosec B608 # table and column names are module constants; values are bound
    found: dict[int, dict[str, Any]] = {}
    uids = sorted({r["uid"] for r in rows})
    keys = sorted({r["group_key"] for r in rows})
    rules = sorted({r["rule_id"] for r in rows})
    for part in _chunks(uids):
        sql = f"{select_found}uid IN ({_marks(len(part))})"
        for values in native.execute(sql, builtins.list(part)):
            found[values[0]] = dict(zip(_FOUND, values, strict=True))
    for part in _chunks(keys):
        sql = f"{select_found}group_key IN ({_marks(len(part))}) AND rule_id IN ({_marks(len(rules))})"
        for values in native.execute(sql, [*part, *rules]):
            found[values[0]] = dict(zip(_FOUND, values, strict=True))
    new, targets = _plan(rows, named, found.values())
    for row in new:
        values = [json.dumps(row[c]) if c in _JSON_COLUMNS else row[c] for c in _INSERTED]
        cursor = native.execute(_INSERT_ALERT, values)
        if cursor.lastrowid is None:
            raise StateError("audit_alerts: the database handed out no id")
        row["id"] = int(cursor.lastrowid)
    links = _links(targets)
    linked: dict[int, builtins.list[str]] = {}
    ids = builtins.list(links)
    for part in _chunks(ids):
        sql = (
            f"SELECT alert_id, event_uid FROM {alert_events.name} "  # noqa: S608  # nosec B608 # a constant table name and '?' marks; the ids are bound
            f"WHERE alert_id IN ({_marks(len(part))}) ORDER BY alert_id, position"
        )
        for alert_id, event_uid in native.execute(sql, builtins.list(part)):
            linked.setdefault(alert_id, []).append(event_uid)
    pending = _pending(links, linked)
    if pending:
        native.executemany(
            _INSERT_LINK, [(p["alert_id"], p["event_uid"], p["position"]) for p in pending]
        )
    return new, linked


def _marks(count: int) -> str:
    return ",".join("?" * count)  # placeholders only: the values are parameters


def _stored(row: Mapping[str, Any], event_uids: Sequence[str]) -> StoredAlert:
    return StoredAlert(
        id=row["id"],
        uid=row["uid"],
        rule_id=row["rule_id"],
        title=row["title"],
        level=row["level"],
        kind=row["kind"],
        group=row["group"],
        measure=row["measure"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        actions=tuple(row["actions"]),
        stored_at=row["stored_at"],
        rule_path=row["rule_path"],
        event_uids=tuple(event_uids),
    )


class AlertStore(SqlStore):
    """The alerts on one engine (the ledger's, or any other)."""

    metadata = metadata

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that is the only writer of the alerts until it ends."""
        async with (
            sqlite_writer(self.engine),
            self.engine.connect() as connection,
            connection.begin(),
        ):
            if connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            await append_in_order(connection, alerts)
            yield connection

    async def add(self, batch: Sequence[Alert], *, now: datetime) -> builtins.list[StoredAlert]:
        """Store each alert of ``batch`` that is not a repeat (module docstring), in
        order, in one transaction; only those newly stored, with their ids. A repeat's
        events the stored alert did not name yet are linked to it."""
        if not batch:
            return []
        stored_at = ms(now)
        rows = [_row(alert, stored_at) for alert in batch]
        named = [alert.event_uids for alert in batch]
        if self.engine.dialect.name == "sqlite":  # the whole transaction in one call
            async with sqlite_writer(self.engine), self.engine.begin() as connection:
                new, linked = await in_sqlite_thread(connection, _add_sqlite, rows, named)
            return [_stored(row, linked[row["id"]]) for row in new]
        async with self._writing() as connection:
            columns = [alerts.c[name] for name in _FOUND]
            uids = sorted({r["uid"] for r in rows})
            keys = sorted({r["group_key"] for r in rows})
            rules = sorted({r["rule_id"] for r in rows})
            found: dict[int, dict[str, Any]] = {}
            for part in _chunks(uids):
                query = select(*columns).where(alerts.c.uid.in_(part))
                for r in await connection.execute(query):
                    found[r.id] = dict(r._mapping)
            for part in _chunks(keys):
                query = select(*columns).where(
                    alerts.c.group_key.in_(part), alerts.c.rule_id.in_(rules)
                )
                for r in await connection.execute(query):
                    found[r.id] = dict(r._mapping)
            new, targets = _plan(rows, named, found.values())
            if new:  # one statement; the ids come back in the rows' order
                statement = alerts.insert().returning(alerts.c.id, sort_by_parameter_order=True)
                ids = (await connection.execute(statement, new)).scalars().all()
                if len(ids) != len(new):
                    raise StateError("audit_alerts: the database handed out fewer ids")
                for target, new_id in zip(new, ids, strict=True):
                    target["id"] = int(new_id)
            links = _links(targets)
            linked = await self._linked(connection, builtins.list(links))
            pending = _pending(links, linked)
            if pending:
                await connection.execute(alert_events.insert(), pending)
        return [_stored(row, linked[row["id"]]) for row in new]

    @staticmethod
    async def _linked(
        connection: AsyncConnection, ids: Sequence[int]
    ) -> dict[int, builtins.list[str]]:
        """The event uids linked to each of ``ids``, in the order they were linked."""
        out: dict[int, builtins.list[str]] = {}
        for part in _chunks(ids):
            query = (
                select(alert_events.c.alert_id, alert_events.c.event_uid)
                .where(alert_events.c.alert_id.in_(part))
                .order_by(alert_events.c.alert_id, alert_events.c.position)
            )
            for r in await connection.execute(query):
                out.setdefault(r.alert_id, []).append(r.event_uid)
        return out

    async def list(
        self,
        *,
        after_id: int = 0,
        limit: int = 100,
        rule: str | None = None,
        since: datetime | None = None,
        level: str | None = None,
        newest: bool = False,
    ) -> builtins.list[StoredAlert]:
        """The alerts after ``after_id``, oldest first (a feed: pass the last id seen);
        at most ``limit`` (1 to 1000). ``rule``: of that rule id only; ``since``: whose
        window ends at or after it; ``level``: at least that level (``high`` gives high
        and critical); ``newest``: the newest ``limit`` of them, newest first."""
        query = select(alerts).where(alerts.c.id > after_id)
        if rule is not None:
            query = query.where(alerts.c.rule_id == rule)
        if since is not None:
            query = query.where(alerts.c.window_end >= ms(since))
        if level is not None:
            if level not in LEVELS:
                raise UsageError(f"level: one of {', '.join(LEVELS)}")
            query = query.where(alerts.c.level.in_(LEVELS[LEVELS.index(level) :]))
        order = alerts.c.id.desc() if newest else alerts.c.id
        query = query.order_by(order).limit(max(1, min(limit, 1000)))
        return await self._select(query)

    async def get(self, alert_id: int) -> StoredAlert | None:
        found = await self._select(select(alerts).where(alerts.c.id == alert_id))
        return found[0] if found else None

    async def for_event(self, event_uid: str) -> builtins.list[StoredAlert]:
        """The alerts linked to the event ``event_uid``, oldest first."""
        ids = select(alert_events.c.alert_id).where(alert_events.c.event_uid == event_uid)
        return await self._select(select(alerts).where(alerts.c.id.in_(ids)).order_by(alerts.c.id))

    async def _select(self, query: Any) -> builtins.list[StoredAlert]:
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
            linked = await self._linked(connection, [r.id for r in rows])
        return [
            StoredAlert(
                id=r.id,
                uid=r.uid,
                rule_id=r.rule_id,
                title=r.title,
                level=r.level,
                kind=r.kind,
                group=r.group,
                measure=r.measure,
                window_start=r.window_start,
                window_end=r.window_end,
                actions=tuple(r.actions),
                stored_at=r.stored_at,
                rule_path=r.rule_path,
                event_uids=tuple(linked.get(r.id, ())),
            )
            for r in rows
        ]


def _attribute(value: object) -> AttributeValue:
    if value is None or isinstance(value, str | int | bool):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def finding(alert: Alert | StoredAlert, recorder: Recorder, now: datetime) -> Event:
    """The OCSF Detection Finding (class 2004, Create: :data:`Activity.ALERT_RAISED
    <trustmesh.reasons.Activity.ALERT_RAISED>`) that records ``alert``, built by
    ``recorder`` and not written (:meth:`Recorder.write` it). Severity from the level;
    attributes: the alert's uid, rule, level, kind, measure, window, the uids of its
    events (comma-separated) and its group (``group.<field>``, the first 20); the
    group's source address, when it has one, as ``src_endpoint``."""
    data = alert.to_dict()
    attributes: dict[str, AttributeValue] = {
        "alert_uid": data["uid"],
        "rule_id": data["rule_id"],
        "level": data["level"],
        "kind": data["kind"],
        "measure": data["measure"],
        "window_start": data["window"]["start"],
        "window_end": data["window"]["end"],
        "event_count": len(data["event_uids"]),
        "event_uids": ",".join(data["event_uids"])[:4096],
    }
    if isinstance(alert, StoredAlert):
        attributes["alert_id"] = alert.id
    group = data["group"]
    for name, value in builtins.list(group.items())[:_MAX_GROUP_ATTRIBUTES]:
        attributes[f"group.{name}"[:64]] = _attribute(value)
    src = None
    address = group.get("src_endpoint.ip")
    if isinstance(address, str):
        with contextlib.suppress(ValueError):
            src = Endpoint(ip=str(ipaddress.ip_address(address)))
    made = recorder.build(
        Activity.ALERT_RAISED,
        f"alert: {data['title']}"[:512],
        src=src,
        attributes=attributes,
        now=now,
    )
    return made.model_copy(update={"severity": _SEVERITY.get(data["level"], Severity.UNKNOWN)})
