"""Deliveries taken at once (producers deliver concurrently, on several connections):
detection sees every stored event once, in the order of the chain, a duplicate across
batches is stored and detected once, and each batch's answer names only its own
events."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from auditkit import T0, login_failed

from trustmesh import crypto
from trustmesh.audit.chain import CheckpointPolicy
from trustmesh.audit.detection import Detector
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.service import AuditService
from trustmesh.store import create_engine, sqlite_url

AUTH = "spiffe://shop.test/trustmesh/auth"


async def test_batches_taken_at_once_are_detected_in_chain_order(tmp_path: Path) -> None:
    ledger = Ledger(create_engine(sqlite_url(tmp_path / "audit.db")))
    await ledger.create()
    now = [T0.timestamp() + 30]
    service = AuditService(
        ledger,
        crypto.generate_signing_key(),
        Detector.shipped(),
        CheckpointPolicy(records=10_000),
        clock=lambda: now[0],
    )
    seen: list[str] = []
    service.taps.append(lambda event: seen.append(event["metadata"]["uid"]))
    batches = [[login_failed(f"user{b}", b + i / 100) for i in range(25)] for b in range(12)]
    batches[5].append(batches[4][0])  # a duplicate: stored once, detected once
    try:
        answers = await asyncio.gather(*(service.ingest(b, AUTH) for b in batches))
        now[0] += 300  # every window has closed
        await service.tick()
    finally:
        await ledger.close()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        chain = [uid for (uid,) in db.execute("SELECT uid FROM audit_records ORDER BY seq")]
    assert len(chain) == 300
    assert seen == chain
    for batch, answer in zip(batches, answers, strict=True):
        mine = {e["metadata"]["uid"] for e in batch}
        assert set(answer.appended.stored) <= mine
    assert sum(len(a.appended.stored) for a in answers) == 300
    assert sum(len(a.appended.duplicates) for a in answers) == 1
    # the twelve accounts each had 25 failures within a minute: one brute-force alert each
    brute = {str(dict(a.group).get("unmapped.trustmesh.attributes.login")) for a in service.alerts}
    assert {f"user{b}" for b in range(12)} <= brute
