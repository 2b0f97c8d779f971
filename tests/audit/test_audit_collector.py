"""The audit collector over its real mTLS listener: a delivery is stored once (a retry
is all duplicates), stamped with who delivered it, invalid events and bodies quarantined
with the reason; the operator alone searches, verifies and reads alerts; ten failed
logins for one account in a minute raise exactly one alert; a record altered in the
database is named by verify."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from auditkit import login_failed
from collectorrig import (
    PAYMENTS,
    CollectorRig,
    collector_config,
    collector_rig,
    identity_for,
)

from trustmesh.audit.app import MAX_BODY
from trustmesh.audit.chain import Checkpoint
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(collector_config(), short_tmp / "identity")


@pytest.fixture
async def rig(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[CollectorRig]:
    # no periodic tick: it would advance detection to the wall clock, far past these
    # events' times, and store the collector's own events between the assertions
    async with collector_rig(
        identity, short_tmp / "state", collector_config(), tick=3600
    ) as running:
        yield running


async def test_a_delivery_is_stored_once_and_stamped(rig: CollectorRig) -> None:
    batch = [login_failed(f"user{i}", i) for i in range(3)]
    status, answer = await rig.payments.call("POST", "/v1/events", {"events": batch})
    assert (status, answer) == (200, {"stored": 3, "duplicates": 0, "quarantined": 0})
    status, answer = await rig.payments.call("POST", "/v1/events", {"events": batch})
    assert (status, answer) == (200, {"stored": 0, "duplicates": 3, "quarantined": 0})

    status, found = await rig.operator.call("GET", "/v1/events?limit=10")
    assert status == 200
    stored = found["events"]
    assert [e["metadata"]["uid"] for e in stored] == [e["metadata"]["uid"] for e in batch]
    assert {e["unmapped"]["trustmesh"]["reporter"] for e in stored} == {PAYMENTS}
    assert [e["seq"] for e in stored] == [1, 2, 3]
    status, found = await rig.operator.call(
        "GET", "/v1/events?reason=login-failed&newest=1&limit=1"
    )
    assert [e["seq"] for e in found["events"]] == [3]
    status, health = await rig.payments.call("GET", "/v1/health")
    assert (status, health["records"]) == (200, 3)


async def test_invalid_events_and_bodies_are_quarantined_with_the_reason(
    rig: CollectorRig,
) -> None:
    good = login_failed("alice", 1)
    broken = {k: v for k, v in login_failed("bob", 2).items() if k != "metadata"}
    status, answer = await rig.payments.call("POST", "/v1/events", {"events": [good, broken]})
    assert (status, answer) == (200, {"stored": 1, "duplicates": 0, "quarantined": 1})
    status, answer = await rig.payments.call("POST", "/v1/events", raw=b"{not json")
    assert (status, answer["quarantined"]) == (200, 1)
    status, answer = await rig.payments.call("POST", "/v1/events", {"events": [good] * 1001})
    assert status == 413
    status, kept = await rig.operator.call("GET", "/v1/quarantine")
    assert status == 200
    reasons = [q["reason"] for q in kept["quarantined"]]
    assert len(reasons) == 2
    assert "the delivery is not JSON" in reasons
    assert any("uid" in reason for reason in reasons)


async def test_only_the_operator_reads_the_log(rig: CollectorRig) -> None:
    for method, path in (
        ("GET", "/v1/events"),
        ("POST", "/v1/verify"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/alerts"),
        ("GET", "/v1/quarantine"),
    ):
        status, _ = await rig.payments.call(method, path, {} if method == "POST" else None)
        assert status == 403, path
    denied = [e for e in rig.sink.events if e.reason == "admin-denied"]
    assert len(denied) == 5
    assert {e.peer_spiffe_id for e in denied} == {PAYMENTS}
    status, _answer = await rig.operator.call("GET", "/v1/events?color=red")
    assert status == 400


async def test_ten_failed_logins_raise_one_alert(rig: CollectorRig) -> None:
    attempts = [login_failed("alice", i * 3, ip="203.0.113.9") for i in range(12)]
    for attempt in attempts:  # one delivery each, as a producer under load might send
        status, _ = await rig.payments.call("POST", "/v1/events", {"events": [attempt]})
        assert status == 200
    status, answer = await rig.operator.call("GET", "/v1/alerts")
    brute = [a for a in answer["alerts"] if a["title"] == "Brute-force login against one account"]
    assert len(brute) == 1
    assert brute[0]["group"] == {"unmapped.trustmesh.attributes.login": "alice"}
    assert set(brute[0]["event_uids"]) <= {e["metadata"]["uid"] for e in attempts}
    last = answer["alerts"][-1]["id"]
    status, later = await rig.operator.call("GET", f"/v1/alerts?after={last}")
    assert later["alerts"] == []


async def test_the_checkpoint_key_is_published_to_the_operator(rig: CollectorRig) -> None:
    """``GET /v1/keys``: the public key the checkpoints are signed with — the one that
    checks the signature of every checkpoint in the file, and no other."""
    import base64

    from trustmesh.audit.verifier import Record, verify_chain

    batch = [login_failed(f"user{i}", i) for i in range(6)]
    await rig.payments.call("POST", "/v1/events", {"events": batch})
    status, answer = await rig.operator.call("GET", "/v1/keys")
    assert status == 200
    (key,) = answer["keys"]
    assert key["alg"] == "Ed25519"
    # dated by the checkpoints it signed: the first and the latest in the file
    assert key["first_signed"] is not None
    assert key["first_signed"] <= key["last_signed"]
    public = base64.urlsafe_b64decode(key["public_key"] + "==")
    lines = (rig.state / "audit" / "checkpoints.jsonl").read_bytes().splitlines()
    signed = [Checkpoint.from_line(line) for line in lines]
    assert {c.key_id for c in signed} == {key["key_id"]}
    first, last = (
        datetime.fromtimestamp(f(c.time for c in signed) / 1000, UTC) for f in (min, max)
    )
    assert datetime.fromisoformat(key["first_signed"].replace("Z", "+00:00")) == first
    assert datetime.fromisoformat(key["last_signed"].replace("Z", "+00:00")) == last
    with sqlite3.connect(rig.state / "audit" / "audit.db") as database:
        rows = database.execute("SELECT seq, body, hash FROM audit_records ORDER BY seq")
        records = [Record(seq, bytes(body), bytes(h)) for seq, body, h in rows]
    assert verify_chain(records, {key["key_id"]: public}, signed) is None
    other = bytes(31) + b"x"  # another key under the same id: refused
    assert verify_chain(records, {key["key_id"]: other}, signed) is not None


async def test_verify_names_an_altered_record(rig: CollectorRig) -> None:
    batch = [login_failed(f"user{i}", i) for i in range(12)]
    await rig.payments.call("POST", "/v1/events", {"events": batch})
    status, result = await rig.operator.call("POST", "/v1/verify", {})
    assert status == 200
    assert result["intact"] is True
    assert result["records"] == 12
    assert result["covered"] == 12  # checkpoint_every: 5, so the batch was signed
    lines = (rig.state / "audit" / "checkpoints.jsonl").read_bytes().splitlines()
    assert Checkpoint.from_line(lines[-1]).last_seq == 12

    database = sqlite3.connect(rig.state / "audit" / "audit.db")
    with database:
        body = database.execute("SELECT body FROM audit_records WHERE seq = 7").fetchone()[0]
        forged = bytes(body).replace(b"user6", b"user0")
        database.execute("UPDATE audit_records SET body = ? WHERE seq = 7", (forged,))
    database.close()
    status, result = await rig.operator.call("POST", "/v1/verify", {})
    assert result["intact"] is False
    assert (result["finding"]["kind"], result["finding"]["seq"]) == ("altered", 7)
    # a verifier's own copy of the checkpoints is taken too; a bad line is refused
    status, result = await rig.operator.call(
        "POST", "/v1/verify", {"checkpoints": [line.decode() for line in lines]}
    )
    assert result["finding"]["seq"] == 7
    status, _ = await rig.operator.call("POST", "/v1/verify", {"checkpoints": ["{}"]})
    assert status == 400


FAILED_LOGINS = """
title: Any failed login
id: 5d0c7d0e-0b38-4d0e-9a83-7f5d0d8b1a11
status: test
logsource: {product: trustmesh, service: auth}
detection:
  refused:
    unmapped.trustmesh.reason: login-failed
  condition: refused
level: low
"""


async def test_rules_are_tested_over_the_stored_log_or_given_events(rig: CollectorRig) -> None:
    stored = [login_failed("alice", 1), login_failed("bob", 2)]
    await rig.payments.call("POST", "/v1/events", {"events": stored})
    status, result = await rig.operator.call(
        "POST", "/v1/rules/test", {"files": {"mine.yml": FAILED_LOGINS}}
    )
    assert status == 200
    assert result["events"] == 2
    assert len(result["alerts"]) == 2
    assert {a["title"] for a in result["alerts"]} == {"Any failed login"}
    status, result = await rig.operator.call(
        "POST",
        "/v1/rules/test",
        {"files": {"mine.yml": FAILED_LOGINS}, "events": [login_failed("carol", 5)]},
    )
    assert (result["events"], len(result["alerts"])) == (1, 1)
    broken = FAILED_LOGINS.replace("unmapped.trustmesh.reason:", "unmapped.trustmesh.reason|fly:")
    status, result = await rig.operator.call(
        "POST", "/v1/rules/test", {"files": {"broken.yml": broken}}
    )
    assert status == 400
    assert any("broken.yml" in p and "fly" in p for p in result["problems"])
    status, _ = await rig.payments.call(
        "POST", "/v1/rules/test", {"files": {"mine.yml": FAILED_LOGINS}}
    )
    assert status == 403


async def test_a_number_past_64_bits_is_stored_exactly(rig: CollectorRig) -> None:
    """The fast parser would round it to a float; the collector keeps what was sent."""
    event = login_failed("bob", 1)
    event["unmapped"]["trustmesh"]["attributes"]["big"] = 123456789012345678901234567890
    raw = json.dumps({"events": [event]}).encode()
    status, answer = await rig.payments.call("POST", "/v1/events", raw=raw)
    assert (status, answer["stored"]) == (200, 1)
    status, found = await rig.operator.call("GET", "/v1/events?limit=1")
    (stored,) = found["events"]
    assert stored["unmapped"]["trustmesh"]["attributes"]["big"] == 123456789012345678901234567890


async def test_a_delivery_past_the_bound_is_413_and_nothing_is_kept(rig: CollectorRig) -> None:
    """Past MAX_BODY the collector stops reading: 413 (the producer splits), nothing
    stored or quarantined; the next delivery on a new connection is taken."""
    event = login_failed("bob", 1)
    event["message"] = "x" * 1024
    raw = json.dumps({"events": [event] * 4200}).encode()
    assert len(raw) > MAX_BODY
    status, answer = await rig.payments.call("POST", "/v1/events", raw=raw)
    assert (status, answer["error"]) == (413, "request_too_large")
    status, answer = await rig.payments.call("POST", "/v1/events", {"events": [event]})
    assert (status, answer) == (200, {"stored": 1, "duplicates": 0, "quarantined": 0})
    status, kept = await rig.operator.call("GET", "/v1/quarantine")
    assert (status, kept["quarantined"]) == (200, [])
