"""Alerts at the running collector: stored once per rule, group and window (across a
restart too), each recorded in the log as an OCSF Detection Finding linked to the
events that raised it, and sent to the declared webhook signed with its secret."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from auditkit import T0, login_failed
from collectorrig import CONFIG, collector_config, collector_rig, identity_for
from tlsrig import Pki, Receiver, make_pki, receiver

from trustmesh.audit.webhook import verify_signature
from trustmesh.reasons import Activity
from trustmesh.testing import RunningIdentityServer

SECRET = b"webhook-secret-of-this-test-0123"
BRUTE = "Brute-force login against one account"


@pytest.fixture
def pki(short_tmp: Path) -> Pki:
    return make_pki(short_tmp / "pki-hook")


@pytest.fixture
def hook(pki: Pki) -> Iterator[Receiver]:
    yield from receiver(pki)


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(collector_config(), short_tmp / "identity")


def _declaration(folder: Path, pki: Pki, port: int) -> Path:
    (folder / "hook.secret").write_bytes(SECRET + b"\n")
    (folder / "hook.secret").chmod(0o600)
    file = folder / "trustmesh.yaml"
    file.write_text(
        CONFIG
        + "  alerts:\n    webhooks:\n"
        + f"      - {{name: siem, url: 'https://127.0.0.1:{port}/alerts', "
        + f"secret_file: hook.secret, ca_file: '{pki.ca_file}', min_level: medium}}\n"
    )
    return file


async def test_an_alert_is_stored_once_recorded_as_a_finding_and_signed_to_the_webhook(
    identity: RunningIdentityServer, short_tmp: Path, pki: Pki, hook: Receiver
) -> None:
    file = _declaration(short_tmp, pki, hook.port)
    config = collector_config(file.read_text())
    state = short_tmp / "state"
    attempts = [login_failed("alice", i * 3, ip="203.0.113.9") for i in range(12)]
    # no periodic tick (it would advance detection to the wall clock, far past these
    # events' times): the collector's own events are stored by hand below
    async with collector_rig(identity, state, config, config_file=file, tick=3600) as rig:
        for attempt in attempts:
            status, _ = await rig.payments.call("POST", "/v1/events", {"events": [attempt]})
            assert status == 200
        status, answer = await rig.operator.call("GET", "/v1/alerts")
        assert status == 200
        brute = [a for a in answer["alerts"] if a["title"] == BRUTE]
        assert len(brute) == 1, answer
        alert = brute[0]
        assert alert["id"] >= 1
        assert alert["stored_at"] > 0
        assert set(alert["event_uids"]) <= {e["metadata"]["uid"] for e in attempts}

        # the finding reaches the log (the collector's own events, stored at its tick)
        found: list[dict[str, object]] = []
        for _ in range(100):
            await rig.running.service.store_own()  # what its tick does
            status, page = await rig.operator.call("GET", "/v1/events?class_uid=2004&limit=50")
            found = [
                e
                for e in page["events"]
                if e["unmapped"]["trustmesh"]["attributes"]["alert_uid"] == alert["uid"]
            ]
            if found:
                break
            await asyncio.sleep(0.1)
        (recorded,) = found
        assert recorded["unmapped"]["trustmesh"]["reason"] == Activity.ALERT_RAISED.value
        assert recorded["unmapped"]["trustmesh"]["reporter"].endswith("/trustmesh/audit")

        # the webhook: the alert, signed with the declared secret
        (request,) = [r for r in hook.wait_for(1) if json.loads(r.body).get("uid") == alert["uid"]]
        signature = request.headers["X-Trustmesh-Signature"]
        assert verify_signature(SECRET, signature, request.body, datetime.now(UTC))
        assert not verify_signature(SECRET, signature, request.body + b" ", datetime.now(UTC))

        status, _ = await rig.operator.call("GET", "/v1/alerts?level=loud")
        assert status == 400

    # a restart (the detector's windows gone): the same burst again, each a second
    # later (new events, a window overlapping the one alerted on), raises no second
    # alert; the first is still listed
    more = [login_failed("alice", i * 3 + 1, ip="203.0.113.9") for i in range(12)]
    async with collector_rig(identity, state, config, config_file=file, tick=3600) as rig:
        status, answer = await rig.payments.call("POST", "/v1/events", {"events": more})
        assert (status, answer["stored"]) == (200, 12)
        status, answer = await rig.operator.call("GET", "/v1/alerts")
        assert [a["uid"] for a in answer["alerts"] if a["title"] == BRUTE] == [alert["uid"]]


class _Clock:
    def __init__(self, seconds: float) -> None:
        self.now = T0.timestamp() + seconds

    def __call__(self) -> float:
        return self.now


async def test_a_burst_split_by_a_restart_is_counted_whole(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """The collector stops after six failed logins and starts again: it shows detection
    the log's recent events before taking deliveries, so six more make the ten."""
    config, state = collector_config(), short_tmp / "state"
    clock = _Clock(6)
    first = [login_failed("bob", i, ip="203.0.113.9") for i in range(6)]
    async with collector_rig(identity, state, config, clock=clock, tick=3600) as rig:
        status, _ = await rig.payments.call("POST", "/v1/events", {"events": first})
        assert status == 200
    clock.now = T0.timestamp() + 20
    more = [login_failed("bob", 20 + i, ip="203.0.113.9") for i in range(6)]
    async with collector_rig(identity, state, config, clock=clock, tick=3600) as rig:
        status, _ = await rig.payments.call("POST", "/v1/events", {"events": more})
        assert status == 200
        clock.now = T0.timestamp() + 30
        await rig.running.service.tick()
        status, answer = await rig.operator.call("GET", "/v1/alerts")
        (alert,) = [a for a in answer["alerts"] if a["title"] == BRUTE]
        linked = set(alert["event_uids"])
        assert linked & {e["metadata"]["uid"] for e in first}  # before the restart
        assert linked & {e["metadata"]["uid"] for e in more}  # and after it


async def test_a_spool_replayed_after_the_stream_moved_on_still_alerts(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """Ten failed logins reach the collector ten minutes after they happened (a
    producer's spool after an outage), long after detection passed their time: they
    are correlated apart and alert once, within the late lane's quiet time."""
    config, state = collector_config(), short_tmp / "state"
    clock = _Clock(600)
    replay = [login_failed("carol", i * 2, ip="203.0.113.7") for i in range(10)]
    async with collector_rig(identity, state, config, clock=clock, tick=3600) as rig:
        await rig.running.service.tick()  # detection reaches the wall clock
        status, _ = await rig.payments.call("POST", "/v1/events", {"events": replay})
        assert status == 200
        clock.now += 3  # the lane falls quiet (2 s) and is decided at the next tick
        await rig.running.service.tick()
        status, answer = await rig.operator.call("GET", "/v1/alerts")
        (alert,) = [a for a in answer["alerts"] if a["title"] == BRUTE]
        assert set(alert["event_uids"]) == {e["metadata"]["uid"] for e in replay}
        stats = rig.running.service.detector.stats
        assert stats.late >= 10  # each rule a correlation references counts
        assert stats.lost == 0


async def test_a_webhook_that_refuses_an_alert_is_recorded_and_alerted_on(
    identity: RunningIdentityServer, short_tmp: Path, pki: Pki, hook: Receiver
) -> None:
    """The webhook refuses the alert (a 4xx: not retried). The alert stays stored; the
    give-up is an export-failed event in the log, which raises an alert of its own."""
    hook.statuses[:] = [400] * 10  # a 403 is retried: an authorization being changed
    file = _declaration(short_tmp, pki, hook.port)
    config = collector_config(file.read_text())
    attempts = [login_failed("dave", i * 3, ip="203.0.113.5") for i in range(12)]
    async with collector_rig(
        identity, short_tmp / "state", config, config_file=file, tick=3600
    ) as rig:
        status, _ = await rig.payments.call("POST", "/v1/events", {"events": attempts})
        assert status == 200
        hook.wait_for(1)
        failed: list[dict[str, object]] = []
        for _ in range(100):  # the sender's thread records it; the tick stores it
            await rig.running.service.store_own()
            status, page = await rig.operator.call("GET", "/v1/events?reason=export-failed")
            if failed := page["events"]:
                break
            await asyncio.sleep(0.05)
        status, answer = await rig.operator.call("GET", "/v1/alerts")
        (brute,) = [a for a in answer["alerts"] if a["title"] == BRUTE]
        attributes = [e["unmapped"]["trustmesh"]["attributes"] for e in failed]
        assert {(a["receiver"], a["why"]) for a in attributes} == {
            ("webhook siem", "refused: HTTP 400")
        }
        assert f"alert {brute['uid']}" in {a["item"] for a in attributes}
        for _ in range(100):  # its own alert, once the event is stored and detected
            status, answer = await rig.operator.call("GET", "/v1/alerts")
            if "An audit export failed" in [a["title"] for a in answer["alerts"]]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no alert on the failed export")
