"""Syslog over TLS to a real receiver (a CA of the test's own) that reads octet-counted
frames and parses each RFC 5424 message: PRI from the level or OCSF severity, the
header, structured data escaped per §6.3.3, the JSON MSG; a receiver that hangs up is
reconnected to; an untrusted certificate gets nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ledgerrig import ocsf
from syslogrig import SyslogReceiver, parse, syslog_receiver
from tlsrig import Pki, make_pki

from trustmesh.audit._delivery import Backoff
from trustmesh.audit.syslog import SyslogSender, format_alert, format_event, frame
from trustmesh.errors import ConfigError

MS = int(datetime(2030, 1, 1, 12, 30, tzinfo=UTC).timestamp() * 1000) + 7


def alert(n: int = 1, **changes: Any) -> dict[str, Any]:
    return {
        "uid": f"{n:032x}",
        "rule_id": "brute-force",
        "title": "Brute force from one address",
        "level": "high",
        "kind": "event_count",
        "group": {"src_endpoint.ip": "10.0.0.7"},
        "event_uids": ["e1", "e2"],
        "measure": 2,
        "window": {"start": MS - 60_000, "end": MS},
        "actions": [],
        "rule_path": "rules/brute_force.yml",
        **changes,
    }


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="rig")
def rig_fixture(pki: Pki) -> Iterator[SyslogReceiver]:
    yield from syslog_receiver(pki)


def sender(rig: SyslogReceiver, ca: Path, **kwargs: Any) -> SyslogSender:
    return SyslogSender("127.0.0.1", rig.port, str(ca), hostname="collector-1", **kwargs)


def test_an_alert_is_an_rfc5424_message_with_its_structured_data() -> None:
    message = parse(format_alert(alert(), hostname="collector-1", procid="42"))
    assert (message.pri, message.version) == (13 * 8 + 3, 1)
    assert message.timestamp == "2030-01-01T12:30:00.007Z"
    assert (message.hostname, message.app_name, message.procid, message.msgid) == (
        "collector-1",
        "trustmesh-audit",
        "42",
        "alert",
    )
    params = message.params("trustmesh@32473")
    assert params["uid"] == f"{1:032x}"
    assert (params["rule_id"], params["level"], params["events"]) == ("brute-force", "high", "2")
    assert params["window_end"] == str(MS)
    assert message.params("group@32473") == {"src_endpoint.ip": "10.0.0.7"}
    assert json.loads(message.msg) == alert()
    levels = ("critical", "high", "medium", "low", "informational", "made-up")
    pris = [parse(format_alert(alert(level=lv), hostname="h")).pri for lv in levels]
    assert pris == [106, 107, 108, 109, 110, 110]
    assert parse(format_alert(alert(), hostname="h", facility=4, enterprise=99)).pri == 35
    assert "trustmesh@99" in parse(format_alert(alert(), hostname="h", enterprise=99)).sd


def test_structured_data_values_are_escaped_and_names_kept_valid() -> None:
    hostile = 'a"b\\c]d [x@1 y="z"]'
    long_name = "unmapped.trustmesh.attributes.login.extra"
    raw = format_alert(
        alert(title=hostile, group={long_name: "alice", "we ird=]": hostile, "n": None}),
        hostname="bad host\nname",
        app_name="é" * 60,
    )
    assert b'a\\"b\\\\c\\]d [x@1 y=\\"z\\"\\]' in raw  # §6.3.3
    message = parse(raw)  # the parser refuses anything that does not conform
    assert message.params("trustmesh@32473")["title"] == hostile
    group = message.params("group@32473")
    assert group["we_ird__"] == hostile
    (shortened,) = [k for k in group if k.startswith("unmapped")]
    assert len(shortened) == 32
    assert shortened.startswith("unmapped.trustmesh.attr~")
    assert "n" not in group  # a null value: no parameter
    assert message.hostname == "bad_host_name"
    assert message.app_name == "_" * 48
    assert json.loads(message.msg)["title"] == hostile


def test_an_ocsf_event_maps_its_severity_and_fields() -> None:
    event = ocsf(1)  # a deny, Medium severity
    message = parse(format_event(event, hostname="collector-1"))
    assert message.pri == 13 * 8 + 4
    assert message.msgid == f"ocsf-{event['class_uid']}"
    assert message.timestamp.endswith("Z")
    params = message.params("trustmesh@32473")
    assert params["uid"] == event["metadata"]["uid"]
    assert (params["decision"], params["reason"]) == ("deny", "policy-deny")
    assert params["src_ip"] == event["src_endpoint"]["ip"]
    assert json.loads(message.msg) == event
    assert parse(format_event(ocsf(2), hostname="h")).pri == 13 * 8 + 6  # allow: informational
    assert parse(format_event({"class_uid": 1}, hostname="h")).timestamp == "-"


def test_octet_counting_frames_any_bytes() -> None:
    assert frame(b"<14>1 - - - - - - a\nb") == b"21 <14>1 - - - - - - a\nb"


def test_alerts_and_events_reach_a_real_tls_receiver(rig: SyslogReceiver, pki: Pki) -> None:
    out = sender(rig, pki.ca_file)
    out.start()
    assert out.submit(alert(1))
    assert out.submit_event(ocsf(3))
    assert out.submit(alert(2, title="line one\nline two ]"))
    assert out.close(10)
    frames = rig.wait_for(3)
    messages = [parse(f) for f in frames]
    assert [m.msgid for m in messages] == ["alert", f"ocsf-{ocsf(3)['class_uid']}", "alert"]
    assert messages[2].params("trustmesh@32473")["title"] == "line one\nline two ]"
    assert rig.connections == 1  # one connection for all
    assert (out.stats.delivered, out.stats.failed) == (3, 0)


def test_a_receiver_that_hangs_up_is_reconnected_to(rig: SyslogReceiver, pki: Pki) -> None:
    rig.hang_up_after = 1
    out = sender(rig, pki.ca_file, backoff=Backoff(attempts=5, base=0.0))
    out.start()
    for n in range(3):
        out.submit(alert(n))
        rig.wait_for(n + 1)
        # TCP has no acknowledgement: what is written while the receiver hangs up is
        # lost (the module says so); a hang-up before the next write is noticed
        rig.wait_hung_up(n + 1)
    assert out.close(10)
    assert [parse(f).params("trustmesh@32473")["uid"] for f in rig.frames] == [
        f"{n:032x}" for n in range(3)
    ]
    assert rig.connections == 3


def test_an_untrusted_receiver_gets_nothing(rig: SyslogReceiver, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    waits: list[float] = []
    out = sender(rig, other.ca_file, backoff=Backoff(attempts=3), sleep=waits.append)
    out.start()
    out.submit(alert())
    assert out.close(10)
    assert (rig.frames, out.stats.failed, len(waits)) == ([], 1, 2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="port"):
        SyslogSender("127.0.0.1", 0, None, hostname="h")
    with pytest.raises(ConfigError, match="facility"):
        SyslogSender("127.0.0.1", 6514, None, hostname="h", facility=24)
    with pytest.raises(ConfigError, match="CA certificates"):
        SyslogSender("127.0.0.1", 6514, "/nonexistent.pem", hostname="h")
