"""The evidence items' judgements (:mod:`trustmesh.cli.evidence`), on answers in the
shapes the components give (the collector's ``/v1/verify``, ``trustmesh status``, the
identity service's last SVID, the provider's ``/admin/v1/keys``): each check fails when
what it checks is not so. The e2e test asks a real stack for the same answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from trustmesh.cli.evidence import (
    NIST_TENETS,
    PCI_DSS,
    attack_item,
    audit_item,
    audit_key_item,
    ca_item,
    certificates_item,
    document,
    signing_keys_item,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
BACKDATE = timedelta(seconds=10)


def _verify(**changes: object) -> dict[str, object]:
    answer: dict[str, object] = {
        "intact": True, "finding": None, "records": 40, "covered": 30, "unsigned": 10,
        "checkpoints": 3, "pruned": 0,
    }  # fmt: skip
    return {**answer, **changes}


def test_the_audit_item_fails_on_a_finding_or_an_empty_log() -> None:
    assert audit_item(_verify(), NOW).passed
    broken = audit_item(
        _verify(intact=False, finding={"kind": "altered", "seq": 7, "message": "record 7 altered"}),
        NOW,
    )
    assert not broken.passed
    assert "record 7 altered" in broken.result
    assert not audit_item(_verify(records=0, covered=0), NOW).passed


def _status(expires: datetime) -> dict[str, object]:
    return {
        "components": [
            {"name": "orders", "spiffe_id": "spiffe://td/orders", "cert_kind": "svid",
             "cert_expires": expires.isoformat()},
            {"name": "console", "spiffe_id": "spiffe://td/trustmesh/audit", "cert_kind": "web",
             "cert_expires": (NOW + timedelta(days=300)).isoformat()},
        ]
    }  # fmt: skip


def _issued(lifetime: timedelta) -> dict[str, dict[str, str]]:
    start = NOW - BACKDATE
    return {
        "spiffe://td/orders": {
            "not_before": start.isoformat(),
            "not_after": (start + lifetime).isoformat(),
        }
    }


def test_certificate_lifetimes_within_the_bound() -> None:
    ok = certificates_item(_status(NOW + HOUR), _issued(HOUR + BACKDATE), 24 * HOUR, BACKDATE, NOW)
    assert ok.passed, ok.result
    assert [row["component"] for row in ok.figures["svids"]] == ["orders"]  # web: no bound
    too_long = certificates_item(_status(NOW + HOUR), _issued(48 * HOUR), 24 * HOUR, BACKDATE, NOW)
    assert not too_long.passed
    assert "issued for 2d" in too_long.result
    expired = certificates_item(_status(NOW - HOUR), {}, 24 * HOUR, BACKDATE, NOW)
    assert not expired.passed
    assert "expired" in expired.result
    assert not certificates_item({"components": []}, {}, 24 * HOUR, BACKDATE, NOW).passed


def test_the_ca_age() -> None:
    week = timedelta(days=7)
    leaf = (NOW - HOUR, NOW + HOUR)
    assert ca_item([leaf, (NOW - 3 * 24 * HOUR, NOW + 4 * 24 * HOUR)], week, BACKDATE, NOW).passed
    old = ca_item([leaf, (NOW - 8 * 24 * HOUR, NOW + 24 * HOUR)], week, BACKDATE, NOW)
    assert not old.passed
    assert not ca_item([leaf, (NOW - week - HOUR, NOW - HOUR)], week, BACKDATE, NOW).passed
    assert not ca_item([leaf], week, BACKDATE, NOW).passed


def _key(kid: str, status: str, signs_from: datetime) -> dict[str, object]:
    return {
        "kid": kid,
        "status": status,
        "signs_from": signs_from.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "retired_at": None,
        "removed_at": None,
    }


def test_the_signing_key_age() -> None:
    rotation, delay = 24 * HOUR, timedelta(minutes=5)
    fresh = [_key("k2", "active", NOW - 2 * HOUR), _key("k1", "retiring", NOW - 30 * HOUR)]
    assert signing_keys_item(fresh, rotation, delay, NOW).passed
    overdue = signing_keys_item([_key("k1", "active", NOW - 25 * HOUR)], rotation, delay, NOW)
    assert not overdue.passed
    assert "k1 has signed for 1d1h" in overdue.result
    # within the rotation age plus the publish delay and a minute: not yet overdue
    due = [_key("k1", "active", NOW - rotation - delay)]
    assert signing_keys_item(due, rotation, delay, NOW).passed
    two = [_key("a", "active", NOW - HOUR), _key("b", "active", NOW - HOUR)]
    assert not signing_keys_item(two, rotation, delay, NOW).passed
    assert not signing_keys_item([], rotation, delay, NOW).passed


def test_the_attack_item_and_the_document() -> None:
    report = {
        "controls": [
            {"name": "token-forged", "passed": True, "attack": "", "observed": "",
             "event_ids": ["e1", "e2"]},
            {"name": "xss", "passed": False, "attack": "", "observed": "", "event_ids": []},
        ]
    }  # fmt: skip
    item = attack_item(report, NOW, "attack.json")
    assert not item.passed
    assert item.figures["failed"] == ["xss"]
    assert "1 of 2 controls held; 2 audit events" in item.result
    assert not attack_item({"controls": []}, NOW, "empty.json").passed
    doc = document([item, audit_item(_verify(), NOW)], trust_domain="td", generated=NOW)
    assert doc["passed"] is False
    by_id = {c["id"]: c for c in doc["controls"]}
    assert by_id["NIST SP 800-207 tenet 7"]["items"] == ["attack-report", "audit-log-integrity"]
    assert by_id["NIST SP 800-207 tenet 7"]["passed"] is False
    assert by_id["PCI DSS 4.0 10.3.4"]["passed"] is True
    # every control an item names is one of the catalogue, with its text
    assert {c["id"] for c in doc["controls"]} <= set(NIST_TENETS) | set(PCI_DSS)
    assert len(NIST_TENETS) == 7


def _checkpoint_key(first: datetime | None, last: datetime | None) -> dict[str, object]:
    return {
        "key_id": "k1", "alg": "Ed25519", "public_key": "AAAA",
        "first_signed": first.isoformat().replace("+00:00", "Z") if first else None,
        "last_signed": last.isoformat().replace("+00:00", "Z") if last else None,
    }  # fmt: skip


def test_the_audit_key_item_dates_the_key_by_its_checkpoints() -> None:
    """Its age from the first checkpoint it signed; it fails when records wait unsigned
    longer than the checkpoint interval (the signer stalled), when a log with records
    has no checkpoint at all, or when the collector publishes no key or several."""
    interval = timedelta(seconds=10)
    fresh = audit_key_item(
        [_checkpoint_key(NOW - 30 * HOUR, NOW - timedelta(seconds=5))], _verify(), interval, NOW
    )
    assert fresh.passed
    assert fresh.figures["keys"][0]["age"] == "1d6h"
    assert "checkpoint key k1 age 1d6h" in fresh.result
    stale = _checkpoint_key(NOW - 30 * HOUR, NOW - timedelta(minutes=5))
    assert not audit_key_item([stale], _verify(), interval, NOW).passed  # 10 unsigned
    assert audit_key_item([stale], _verify(unsigned=0), interval, NOW).passed  # all signed
    unused = audit_key_item([_checkpoint_key(None, None)], _verify(), interval, NOW)
    assert not unused.passed
    assert "has signed no checkpoint" in unused.result
    assert audit_key_item([_checkpoint_key(None, None)], _verify(records=0), interval, NOW).passed
    assert not audit_key_item([], _verify(), interval, NOW).passed
    two = [_checkpoint_key(NOW - HOUR, NOW), _checkpoint_key(NOW - HOUR, NOW)]
    assert "2 checkpoint keys" in audit_key_item(two, _verify(), interval, NOW).result
