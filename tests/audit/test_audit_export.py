"""Exports: JSON lines (one record a line, whatever the values hold); syslog to a real
TLS receiver (events as events, alerts as alerts); OTLP/HTTP JSON logs to a real HTTP
server that parses what arrives (and a refusal raised); and pseudonymisation — stable
under one key, different under another, the same person the same pseudonym in events
and alerts, the original untouched."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from ledgerrig import T0, ocsf
from syslogrig import SyslogReceiver, parse, syslog_receiver
from tlsrig import Pki, Receiver, make_pki, receiver

from trustmesh.audit.export import OtlpExporter, export_syslog, otlp_logs, write_jsonl
from trustmesh.audit.pseudonymise import PREFIX, Pseudonymiser
from trustmesh.audit.syslog import SyslogSender
from trustmesh.errors import ConfigError, UnavailableError
from trustmesh.events import Endpoint

KEY = bytes(range(32))
MS0 = int(T0.timestamp() * 1000)


def alert(n: int = 1, **changes: Any) -> dict[str, Any]:
    return {
        "uid": f"{n:032x}",
        "rule_id": "brute-force",
        "title": "Brute force\nfrom one address",
        "level": "high",
        "kind": "event_count",
        "group": {"src_endpoint.ip": "10.0.0.7", "unmapped.trustmesh.attributes.login": "bob"},
        "event_uids": ["e1", "e2"],
        "measure": 2,
        "window": {"start": MS0, "end": MS0 + 60_000},
        "actions": [
            {
                "action": "block-address",
                "target": "10.0.0.7",
                "duration_ms": 600_000,
                "dry_run": True,
                "field": "src_endpoint.ip",
            }
        ],
        "rule_path": "rules/brute_force.yml",
        **changes,
    }


def login_event(user: str = "bob", ip: str = "10.0.0.7") -> dict[str, Any]:
    return ocsf(
        1,
        sub=user,
        src=Endpoint(ip=ip, hostname="laptop-bob"),
        attributes={"login": user, "route": "/login"},
        trace_id="ab" * 16,
    )


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="http")
def http_fixture() -> Iterator[Receiver]:
    yield from receiver(None)


def test_jsonl_is_one_record_a_line() -> None:
    out = io.StringIO()
    records = [alert(1), login_event(), alert(2, title="a\u2028b\r\nc")]
    assert write_jsonl(records, out) == 3
    lines = out.getvalue().split("\n")
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == records
    assert out.getvalue().isascii()


def test_syslog_export_sends_events_as_events_and_alerts_as_alerts(pki: Pki) -> None:
    gen = syslog_receiver(pki)
    rig: SyslogReceiver = next(gen)
    try:
        sender = SyslogSender("127.0.0.1", rig.port, str(pki.ca_file), hostname="c1")
        sender.start()
        records = [alert(), login_event(), ocsf(2)]
        assert export_syslog(records, sender) == 3
        assert sender.close(10)
        messages = [parse(f) for f in rig.wait_for(3)]
        assert [m.msgid for m in messages] == ["alert", "ocsf-6003", "ocsf-6003"]
        assert [json.loads(m.msg) for m in messages] == records
    finally:
        gen.close()


def test_otlp_logs_reach_a_real_http_server(http: Receiver) -> None:
    exporter = OtlpExporter(
        f"http://127.0.0.1:{http.port}",
        headers={"X-Api-Key": "k"},
        batch=2,
        clock=lambda: 1_900_000_000.5,
    )
    event = login_event()
    assert exporter.export([alert(), event, alert(2, level="low")]) == 3
    first, second = http.wait_for(2)
    assert (first.path, first.headers["Content-Type"]) == ("/v1/logs", "application/json")
    assert first.headers["X-Api-Key"] == "k"
    payload = json.loads(first.body)
    (resource,) = payload["resourceLogs"]
    assert resource["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "trustmesh-audit"}}
    ]
    (scope,) = resource["scopeLogs"]
    assert scope["scope"]["name"] == "trustmesh.audit"
    raised, logged = scope["logRecords"]
    assert raised["timeUnixNano"] == str((MS0 + 60_000) * 1_000_000)
    assert raised["observedTimeUnixNano"] == "1900000000500000000"
    assert (raised["severityNumber"], raised["severityText"]) == (17, "ERROR")
    assert json.loads(raised["body"]["stringValue"]) == alert()
    attributes = {a["key"]: a["value"] for a in raised["attributes"]}
    assert attributes["trustmesh.alert.rule_id"] == {"stringValue": "brute-force"}
    assert attributes["trustmesh.alert.measure"] == {"intValue": "2"}
    assert attributes["trustmesh.alert.group.src_endpoint.ip"] == {"stringValue": "10.0.0.7"}
    assert logged["timeUnixNano"] == str(event["time"] * 1_000_000)
    assert (logged["severityNumber"], logged["traceId"]) == (13, "ab" * 16)
    attributes = {a["key"]: a["value"] for a in logged["attributes"]}
    assert attributes["ocsf.class_uid"] == {"intValue": "6003"}
    assert attributes["enduser.id"] == {"stringValue": "bob"}
    assert attributes["trustmesh.reason"] == {"stringValue": "policy-deny"}
    (low,) = json.loads(second.body)["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    assert (low["severityNumber"], low["severityText"]) == (10, "INFO2")


def test_an_otlp_refusal_or_an_absent_collector_is_raised(http: Receiver) -> None:
    http.statuses[:] = [200, 503]
    exporter = OtlpExporter(f"http://localhost:{http.port}/", batch=1)
    with pytest.raises(UnavailableError, match="HTTP 503 after 1 records"):
        exporter.export([alert(1), alert(2), alert(3)])
    assert len(http.requests) == 2
    port = http.port
    http.server.shutdown()
    http.server.server_close()
    with pytest.raises(UnavailableError, match="after 0 records"):
        OtlpExporter(f"http://127.0.0.1:{port}").export([alert()])


def test_otlp_over_https_and_the_endpoints_allowed(pki: Pki) -> None:
    gen = receiver(pki)
    rig = next(gen)
    try:
        exporter = OtlpExporter(f"https://127.0.0.1:{rig.port}/otel", ca_file=str(pki.ca_file))
        assert exporter.export([alert()]) == 1
        assert rig.requests[0].path == "/otel/v1/logs"
    finally:
        gen.close()
    for bad in ("http://collector.example:4318", "ftp://127.0.0.1", "https://u:p@c.example"):
        with pytest.raises(ConfigError, match="otlp"):
            OtlpExporter(bad)
    assert otlp_logs([], observed_ns=0)["resourceLogs"][0]["scopeLogs"][0]["logRecords"] == []


def test_pseudonyms_are_stable_keyed_and_leave_the_original_untouched() -> None:
    pseudonymiser = Pseudonymiser(KEY)
    event = login_event()
    before = copy.deepcopy(event)
    hidden = pseudonymiser.event(event)
    assert event == before  # untouched
    bob, address = pseudonymiser.token("bob"), pseudonymiser.token("10.0.0.7")
    assert bob.startswith(PREFIX)
    assert len(bob) == len(PREFIX) + 26
    assert hidden["actor"]["user"] == {"uid": bob}
    assert hidden["src_endpoint"] == {"ip": address, "hostname": pseudonymiser.token("laptop-bob")}
    mine = hidden["unmapped"]["trustmesh"]
    assert (mine["sub"], mine["attributes"]["login"]) == (bob, bob)
    assert mine["attributes"]["route"] == "/login"  # not a person
    assert mine["spiffe_id"] == before["unmapped"]["trustmesh"]["spiffe_id"]  # a workload
    assert hidden["metadata"] == before["metadata"]
    assert "bob" not in json.dumps(hidden)
    assert "10.0.0.7" not in json.dumps(hidden)
    # stable under one key, across instances and records; another key, other pseudonyms
    assert Pseudonymiser(KEY).event(event) == hidden
    assert Pseudonymiser(KEY).token("bob") == bob
    assert Pseudonymiser(bytes(32)).token("bob") != bob
    assert pseudonymiser.token("bob2") != bob
    assert pseudonymiser.event(hidden) == hidden  # applying twice changes nothing
    # an alert about the same person carries the same pseudonyms
    raised = alert()
    masked = pseudonymiser.alert(raised)
    assert raised == alert()
    assert masked["group"] == {
        "src_endpoint.ip": address,
        "unmapped.trustmesh.attributes.login": bob,
    }
    assert masked["actions"][0]["target"] == address
    assert (masked["title"], masked["event_uids"]) == (raised["title"], raised["event_uids"])
    # the OCSF user object of other classes, every string inside
    other = {"class_uid": 3002, "user": {"name": "bob", "uid": "u-1", "groups": [{"name": "x"}]}}
    assert pseudonymiser.event(other)["user"] == {
        "name": bob,
        "uid": pseudonymiser.token("u-1"),
        "groups": [{"name": pseudonymiser.token("x")}],
    }


def test_a_short_key_is_refused_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Pseudonymiser(b"k" * 31)
    assert KEY.hex() not in repr(Pseudonymiser(KEY))
    assert "withheld" in repr(Pseudonymiser(KEY))
