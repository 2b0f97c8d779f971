"""The audit collector's responder for tests of automated responses: the collector's
SVID, a response store, a memory sink for its events, and an alert naming the actions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from trustmesh import events
from trustmesh.audit.detection import Alert
from trustmesh.audit.extensions import PlannedAction
from trustmesh.audit.response import AdminCaller, Responder
from trustmesh.audit.response_store import ResponseStore
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.store import create_engine, sqlite_url


@contextlib.asynccontextmanager
async def responder_rig(
    workload_api: str, audit_id: str, state: Path, db: Path
) -> AsyncIterator[tuple[Responder, events.MemorySink]]:
    """The responder as the collector runs it, finding the components by the endpoint
    files under ``state`` (as ``up`` has them)."""
    trust_domain = audit_id.removeprefix("spiffe://").split("/", 1)[0]
    source = X509Source(workload_api, spiffe_id=audit_id)
    await source.start()
    store = ResponseStore(create_engine(sqlite_url(db)))
    await store.create()
    sink = events.MemorySink()
    recorder = events.Recorder(sink, component="audit", spiffe_id=audit_id)
    caller = AdminCaller(RotatingTLS(source), state, trust_domain)
    try:
        yield Responder(store, caller, recorder, never_block=()), sink
    finally:
        await store.close()
        await source.close()


def alert_with(uid: str, rule_id: str, title: str, *actions: PlannedAction) -> Alert:
    """A matched alert of ``rule_id`` naming ``actions``."""
    return Alert(
        uid=uid,
        rule_id=rule_id,
        title=title,
        level="high",
        kind="match",
        group=(),
        event_uids=("e1",),
        measure=1,
        window_start=0,
        window_end=0,
        actions=actions,
        rule_path="test.yml",
    )
