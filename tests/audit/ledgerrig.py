"""What the audit ledger's tests share: real OCSF events (``Event.to_ocsf()``), a
signing key, a hand-built chain of records for the pure verifier, and a ledger on a
real SQLite file or a real PostgreSQL database of its own (the ``ledger`` fixture: import
``ledger_fixture``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from services import postgres_database
from sqlalchemy import text

from trustmesh import crypto
from trustmesh.audit.chain import GENESIS, Checkpoint, canonical, fields_of, link, make_checkpoint
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.verifier import Record
from trustmesh.events import Decision, Endpoint, EventClass, event
from trustmesh.reasons import Reason
from trustmesh.store import create_engine, sqlite_url

T0 = datetime(2030, 1, 1, tzinfo=UTC)
PRINCIPALS = ("alice", "bob", None)
SERVICES = ("spiffe://shop.example/gateway", "spiffe://shop.example/orders")


def ocsf(n: int, **overrides: Any) -> dict[str, Any]:
    """The ``n``-th of a varied series of events, as the collector receives them."""
    kwargs: dict[str, Any] = {
        "activity_id": 2,
        "activity_name": "Read",
        "component": "gateway",
        "decision": (Decision.ALLOW, Decision.DENY)[n % 2],
        "reason": (Reason.OK, Reason.POLICY_DENY)[n % 2],
        "message": f"GET /orders/{n}",
        "now": T0 + timedelta(seconds=n),
        "sub": PRINCIPALS[n % 3],
        "spiffe_id": SERVICES[n % 2],
        "trace_id": f"{n // 4:032x}",
        "src": Endpoint(ip=f"10.0.{n % 7}.{n % 250 + 1}"),
        "attributes": {"route": "/orders/{id}", "n": n},
    }
    kwargs.update(overrides)
    cls = kwargs.pop("cls", (EventClass.API_ACTIVITY, EventClass.AUTHORIZE_SESSION)[n % 5 == 0])
    return event(cls, **kwargs).to_ocsf()


def records(count: int) -> list[Record]:
    """A correct chain of ``count`` records, seq 1..count, with their columns."""
    out, prev = [], GENESIS
    for n in range(1, count + 1):
        event = ocsf(n)
        body = canonical(event)
        prev = link(prev, body)
        out.append(Record(n, body, prev, fields_of(event)))
    return out


def checkpoints(log: list[Record], at: list[int], key: crypto.SigningKey) -> list[Checkpoint]:
    """Checkpoints signing the head at each seq of ``at`` (ascending)."""
    out: list[Checkpoint] = []
    for seq in at:
        record = log[seq - 1]
        out.append(
            make_checkpoint(
                out[-1] if out else None,
                last_seq=seq,
                last_hash=record.hash,
                now=T0 + timedelta(seconds=seq),
                key=key,
            )
        )
    return out


def trusted(key: crypto.SigningKey) -> dict[str, bytes]:
    public = crypto.signing_public_key(key)
    return {crypto.signing_key_id(public): public}


def renumber(log: list[Record]) -> list[Record]:
    """The rows with seqs 1..n in their current order (what an attacker's UPDATE does)."""
    return [Record(i, r.body, r.hash, r.fields) for i, r in enumerate(log, start=1)]


def rechain(log: list[Record]) -> list[Record]:
    """The rows with every hash recomputed: a forger without the signing key."""
    out, prev = [], GENESIS
    for r in log:
        prev = link(prev, r.body)
        out.append(Record(r.seq, r.body, prev, r.fields))
    return out


@pytest.fixture(
    name="ledger", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]
)
async def ledger_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    """An empty ledger (its checkpoint file in ``tmp_path``) on SQLite or PostgreSQL."""
    file = tmp_path / "checkpoints.jsonl"
    if request.param == "sqlite":
        store = Ledger(create_engine(sqlite_url(tmp_path / "audit.db")), checkpoint_file=file)
        await store.create()
        try:
            yield store
        finally:
            await store.close()
        return
    async with postgres_database("tm_audit") as url:
        store = Ledger(create_engine(url), checkpoint_file=file)
        await store.create()
        try:
            yield store
        finally:
            await store.close()


async def sql(ledger: Ledger, statement: str, **params: Any) -> None:
    """Run raw SQL on the ledger's database, as someone with write access to it."""
    async with ledger.engine.begin() as connection:
        await connection.execute(text(statement), params)
