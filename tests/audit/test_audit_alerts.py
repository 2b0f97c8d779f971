"""The alert store on a real SQLite file and a real PostgreSQL database: one alert per
rule and group per window (by uid, and by an overlapping window), the events of repeats
linked, the feed and its filters, lookup by event; on PostgreSQL the collector's role
adds and reads alerts but cannot rewrite or delete them; and the Detection Finding that
records an alert."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from services import POSTGRES_ADMIN, postgres_database
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from trustmesh.audit.alerts import AlertStore, StoredAlert, alert_grants, finding
from trustmesh.audit.detection import Alert
from trustmesh.audit.extensions import Action, PlannedAction
from trustmesh.errors import UsageError
from trustmesh.events import EventClass, MemorySink, Recorder, Severity, shape_of
from trustmesh.reasons import Activity
from trustmesh.store import create_engine, sqlite_url

T0 = datetime(2030, 1, 1, tzinfo=UTC)
MS0 = int(T0.timestamp() * 1000)


def alert(
    uid: str,
    *,
    rule: str = "brute-force",
    group: tuple[tuple[str, Any], ...] = (("src_endpoint.ip", "10.0.0.7"),),
    events: tuple[str, ...] = ("e1",),
    start: int = 0,
    end: int = 60_000,
    level: str = "high",
) -> Alert:
    return Alert(
        uid=uid,
        rule_id=rule,
        title=f"{rule} from one address",
        level=level,
        kind="event_count",
        group=group,
        event_uids=events,
        measure=len(events),
        window_start=MS0 + start,
        window_end=MS0 + end,
        actions=(
            PlannedAction(Action.BLOCK_ADDRESS, "10.0.0.7", 600_000, True, "src_endpoint.ip"),
        ),
        rule_path="rules/brute_force.yml",
    )


@pytest.fixture(
    name="store", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]
)
async def store_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AlertStore]:
    """An empty alert store on SQLite or on a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        store = AlertStore(create_engine(sqlite_url(tmp_path / "audit.db")))
        await store.create()
        try:
            yield store
        finally:
            await store.close()
        return
    async with postgres_database("tm_alerts") as url:
        store = AlertStore(create_engine(url))
        await store.create()
        try:
            yield store
        finally:
            await store.close()


async def test_an_alert_is_stored_once_by_uid_and_its_new_events_linked(
    store: AlertStore,
) -> None:
    first = await store.add([alert("a1", events=("e1", "e2"))], now=T0)
    assert [(s.id, s.uid, s.event_uids) for s in first] == [(1, "a1", ("e1", "e2"))]
    assert first[0].stored_at == MS0
    assert await store.add([alert("a1", events=("e2", "e3"))], now=T0 + timedelta(1)) == []
    (again,) = await store.list()
    assert (again.id, again.event_uids, again.stored_at) == (1, ("e1", "e2", "e3"), MS0)
    # a uid twice in one batch: stored once
    twice = await store.add([alert("a2", start=120_000, end=180_000)] * 2, now=T0)
    assert [s.uid for s in twice] == ["a2"]


async def test_one_alert_per_rule_and_group_per_window(store: AlertStore) -> None:
    await store.add([alert("a1", events=("e1",), start=0, end=60_000)], now=T0)
    repeats = [
        alert("a2", events=("e2",), start=30_000, end=90_000),  # overlaps
        alert("a3", events=("e3",), start=60_000, end=120_000),  # touches its end
    ]
    assert await store.add(repeats, now=T0) == []
    others = [
        alert("b1", rule="other-rule", start=0, end=60_000),  # another rule
        alert("c1", group=(("src_endpoint.ip", "10.0.0.8"),)),  # another group
        alert("d1", events=("e4",), start=60_001, end=120_000),  # the next window
    ]
    assert [s.uid for s in await store.add(others, now=T0)] == ["b1", "c1", "d1"]
    (kept,) = await store.for_event("e2")
    assert (kept.uid, kept.event_uids) == ("a1", ("e1", "e2", "e3"))
    # an overlap inside one batch counts too, and links to the first
    batch = [alert("f1", rule="x", events=("x1",)), alert("f2", rule="x", events=("x2",), end=5)]
    (only,) = await store.add(batch, now=T0)
    assert (only.uid, only.event_uids) == ("f1", ("x1", "x2"))


async def test_the_feed_its_filters_and_lookups(store: AlertStore) -> None:
    batch = [
        alert(
            f"a{n}",
            rule=("r1", "r2")[n % 2],
            level=("low", "high", "critical")[n % 3],
            start=n * 100_000,
            end=n * 100_000 + 60_000,
            events=(f"e{n}", "shared"),
        )
        for n in range(9)
    ]
    stored = await store.add(batch, now=T0)
    assert [s.id for s in stored] == list(range(1, 10))
    page = await store.list(limit=4)
    assert [s.uid for s in page] == ["a0", "a1", "a2", "a3"]
    assert [s.uid for s in await store.list(after_id=page[-1].id, limit=2)] == ["a4", "a5"]
    assert {s.rule_id for s in await store.list(rule="r2")} == {"r2"}
    assert [s.level for s in await store.list(level="high")] == [
        "high",
        "critical",
        "high",
        "critical",
        "high",
        "critical",
    ]
    since = T0 + timedelta(milliseconds=660_000)
    assert [s.uid for s in await store.list(since=since)] == ["a6", "a7", "a8"]
    with pytest.raises(UsageError, match="level"):
        await store.list(level="severe")
    got = await store.get(3)
    assert got is not None
    assert got.to_dict() == {
        **batch[2].to_dict(),
        "id": 3,
        "stored_at": MS0,
    }
    assert await store.get(99) is None
    assert [s.uid for s in await store.for_event("shared")] == [f"a{n}" for n in range(9)]
    assert await store.for_event("nothing") == []


async def test_two_collectors_at_once_store_an_alert_once(store: AlertStore) -> None:
    other = AlertStore(create_engine(store.engine.url.render_as_string(hide_password=False)))
    try:
        batches = [[alert(f"a{n}", events=(f"e{n}",)) for n in range(5)] for _ in range(4)]
        done = await asyncio.gather(
            *(s.add(b, now=T0) for s, b in zip((store, other) * 2, batches, strict=True))
        )
    finally:
        await other.close()
    assert sorted(a.uid for stored in done for a in stored) == ["a0"]  # one window
    (kept,) = await store.list()
    assert kept.event_uids == tuple(f"e{n}" for n in range(5))


def test_the_grants_are_insert_select_and_the_sequence() -> None:
    statements = alert_grants("audit_collector", schema="audit")
    tables = '"audit"."audit_alert_events", "audit"."audit_alerts"'
    assert statements == (
        f'REVOKE ALL ON {tables} FROM "audit_collector"',
        'GRANT USAGE ON SCHEMA "audit" TO "audit_collector"',
        f'GRANT SELECT, INSERT ON {tables} TO "audit_collector"',
        'GRANT USAGE ON SEQUENCE "audit"."audit_alerts_id_seq" TO "audit_collector"',
    )
    for bad in ('x"; DROP TABLE audit_alerts; --', "", "Upper"):
        with pytest.raises(UsageError):
            alert_grants(bad)


@pytest.mark.services
async def test_the_collector_role_adds_and_reads_but_cannot_rewrite() -> None:
    role = f"tm_alerts_collector_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_alerts") as url:
            owner = AlertStore(create_engine(url))
            await owner.create()
            async with owner.engine.begin() as connection:
                for statement in alert_grants(role):
                    await connection.execute(text(statement))
            await owner.close()
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            collector = AlertStore(create_engine(as_role))
            try:
                assert len(await collector.add([alert("a1"), alert("b1", rule="r")], now=T0)) == 2
                assert await collector.add([alert("a1", events=("e9",))], now=T0) == []
                assert (await collector.for_event("e9"))[0].uid == "a1"
                for statement in (
                    "UPDATE audit_alerts SET level = 'low'",
                    "DELETE FROM audit_alerts",
                    "TRUNCATE audit_alerts",
                    "UPDATE audit_alert_events SET event_uid = 'x'",
                    "DELETE FROM audit_alert_events",
                    "SELECT setval('audit_alerts_id_seq', 1)",
                ):
                    with pytest.raises(DBAPIError, match="permission denied"):
                        async with collector.engine.begin() as connection:
                            await connection.execute(text(statement))
            finally:
                await collector.close()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_an_alert_records_as_a_detection_finding(store: AlertStore) -> None:
    assert shape_of(Activity.ALERT_RAISED)[0] is EventClass.DETECTION_FINDING
    sink = MemorySink()
    recorder = Recorder(sink, component="audit", spiffe_id="spiffe://shop.example/audit")
    (stored,) = await store.add([alert("a1", events=("e1", "e2"), level="critical")], now=T0)
    for raised in (alert("a1", events=("e1", "e2"), level="critical"), stored):
        made = finding(raised, recorder, T0)
        assert sink.events == []  # built, not written
        ocsf = made.to_ocsf()
        assert (ocsf["class_uid"], ocsf["activity_id"], ocsf["type_uid"]) == (2004, 1, 200401)
        assert (made.severity, ocsf["severity"]) == (Severity.CRITICAL, "Critical")
        assert ocsf["status_detail"] == "alert-raised"
        assert ocsf["message"] == "alert: brute-force from one address"
        assert ocsf["src_endpoint"] == {"ip": "10.0.0.7"}
        attributes = ocsf["unmapped"]["trustmesh"]["attributes"]
        assert attributes["rule_id"] == "brute-force"
        assert attributes["level"] == "critical"
        assert attributes["event_uids"] == "e1,e2"
        assert attributes["group.src_endpoint.ip"] == "10.0.0.7"
        assert attributes["alert_uid"] == "a1"
        assert ocsf["time"] == MS0
    assert attributes["alert_id"] == stored.id
    assert isinstance(stored, StoredAlert)
    recorder.write(made)
    assert sink.events == [made]
