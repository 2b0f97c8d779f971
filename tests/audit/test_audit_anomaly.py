"""Behavioural baselines (trustmesh.audit.anomaly): each way a principal strays from its
own habits, said in words; what is only learned; and the collector alerting on it."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from collectorrig import collector_config, collector_rig, identity_for
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh import events
from trustmesh.audit.anomaly import AnomalyDetector, AnomalySettings, principal_of
from trustmesh.audit.server import detector_for
from trustmesh.config import parse_config
from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer

T0 = datetime(2026, 1, 5, tzinfo=UTC)
DAY = timedelta(days=1)
GATEWAY = events.Recorder(events.MemorySink(), component="gateway")
AUTH = events.Recorder(events.MemorySink(), component="auth")
ORDERS = events.Recorder(events.MemorySink(), component="orders")
ALICE = "4a7b3c2d1e0f4a7b3c2d1e0f4a7b3c2d"


def request(
    at: datetime,
    *,
    sub: str = ALICE,
    address: str = "10.1.1.1",
    path: str = "/orders",
    jti: str | None = None,
    allowed: bool = True,
) -> dict[str, Any]:
    return GATEWAY.record(
        Reason.REQUEST_FORWARDED if allowed else Reason.POLICY_DENY,
        "forwarded",
        decision=events.Decision.ALLOW if allowed else events.Decision.DENY,
        sub=sub,
        jti=jti or secrets.token_hex(16),
        attributes={"method": "GET", "path": path, "route": path, "client": address},
        now=at,
    ).to_ocsf()


def sign_in(at: datetime, login: str, address: str, *, ok: bool, sub: str | None = None) -> Any:
    return AUTH.record(
        Reason.LOGIN_SUCCEEDED if ok else Reason.LOGIN_FAILED,
        "signed in",
        decision=events.Decision.ALLOW if ok else events.Decision.DENY,
        sub=sub,
        src=events.Endpoint(ip=address, port=40000),
        attributes={"login": login},
        now=at,
    ).to_ocsf()


def call(at: datetime, caller: str, path: str) -> dict[str, Any]:
    return ORDERS.record(
        Reason.POLICY_ALLOW,
        "call allowed",
        decision=events.Decision.ALLOW,
        peer_spiffe_id=f"spiffe://shop.test/{caller}",
        client_id=caller,
        src=events.Endpoint(ip="127.0.0.1", port=50000),
        attributes={"method": "GET", "path": path, "route": "orders GET /orders/{order_id}"},
        now=at,
    ).to_ocsf()


def habits(days: int = 2) -> list[dict[str, Any]]:
    """Alice's usual days: from home, a few requests every two hours, 8 to 20."""
    out = []
    for day in range(days):
        for hour in range(8, 20, 2):
            at = T0 + day * DAY + timedelta(hours=hour)
            jti = secrets.token_hex(16)
            out += [request(at + timedelta(seconds=30 * i), jti=jti) for i in range(4)]
    return out


def run(stream: list[dict[str, Any]], **settings: Any) -> tuple[AnomalyDetector, list[Any]]:
    detector = AnomalyDetector(AnomalySettings(**settings))
    alerts = []
    for event in sorted(stream, key=lambda e: e["time"]):
        alerts += detector.observe(event)
    return detector, alerts + detector.flush()


def test_her_usual_days_raise_nothing() -> None:
    _, alerts = run(habits(4))
    assert alerts == []


def test_a_token_used_from_a_second_address_is_named() -> None:
    at = T0 + 2 * DAY + timedelta(hours=10)
    stolen = secrets.token_hex(16)
    stream = [
        *habits(),
        request(at, jti=stolen),
        request(at + timedelta(minutes=2), jti=stolen, address="198.51.100.7"),
    ]
    detector, alerts = run(stream)
    (alert,) = alerts
    assert alert.rule_id == "anomaly"
    assert alert.kind == "anomaly"
    assert dict(alert.group) == {"principal": ALICE}
    assert f"its token {stolen[:8]}… used from 198.51.100.7 as well as 10.1.1.1" in alert.title
    assert "from a new address 198.51.100.7" in alert.title
    assert detector.judged[0].score >= 5


def test_a_token_from_two_addresses_needs_no_baseline() -> None:
    """Seen first an hour ago: only learned, but for this."""
    stolen = secrets.token_hex(16)
    stream = [
        request(T0, jti=stolen),
        request(T0 + timedelta(minutes=1), jti=stolen, address="198.51.100.7"),
    ]
    _, alerts = run(stream)
    (alert,) = alerts
    assert "its token" in alert.title
    assert "new address" not in alert.title  # no baseline to say so yet


def test_a_new_address_alone_is_not_an_alert_but_refusals_there_are() -> None:
    at = T0 + 2 * DAY + timedelta(hours=10)
    travel = [request(at + timedelta(seconds=i), address="10.9.9.9") for i in range(3)]
    assert run(habits() + travel)[1] == []
    # a typo from a new address, then signed in from there: her, travelling
    typo = [
        sign_in(at, "alice", "10.9.9.9", ok=False, sub=ALICE),
        sign_in(at + timedelta(seconds=9), "alice", "10.9.9.9", ok=True, sub=ALICE),
    ]
    assert run(habits() + typo)[1] == []
    # refused from where she never was, and never let in there
    tried = [sign_in(at, "alice", "203.0.113.5", ok=False, sub=ALICE)]
    (alert,) = run(habits() + tried)[1]
    assert "from a new address 203.0.113.5, refused there 1×" in alert.title


def test_a_service_that_calls_many_times_its_usual_rate_is_named() -> None:
    stream = []
    for window in range(2 * 144):  # two days: 3 reads every ten minutes
        at = T0 + timedelta(minutes=10 * window)
        stream += [
            call(at + timedelta(seconds=60 * i), "storefront", f"/orders/o{i}") for i in range(3)
        ]
    scrape = T0 + 2 * DAY + timedelta(hours=3)
    stream += [
        call(scrape + timedelta(seconds=i), "storefront", f"/orders/x{i}") for i in range(60)
    ]
    _, alerts = run(stream)
    (alert,) = alerts
    assert alert.title.startswith("Anomaly: storefront called orders GET /orders/{order_id}")
    assert "× its usual rate" in alert.title
    # the hops of a service come from it, not from an address of the principal's
    assert "new address" not in alert.title


def test_a_surge_while_learning_is_only_learned() -> None:
    stream = [call(T0 + timedelta(seconds=i), "storefront", f"/orders/{i}") for i in range(3)]
    stream += [
        call(T0 + timedelta(hours=2, seconds=i), "storefront", f"/orders/{i}") for i in range(90)
    ]
    assert run(stream)[1] == []
    assert run(stream, learning_ms=3_600_000)[1]  # past its learning: the same surge alerts


def test_an_address_that_tries_many_names_is_named_even_made_up_ones() -> None:
    at = T0 + timedelta(hours=3)
    tries = [
        sign_in(at + timedelta(minutes=4 * i), f"user{i}", "203.0.113.9", ok=False)
        for i in range(7)
    ]
    _, alerts = run(tries)
    first, *more = alerts
    assert dict(first.group) == {"principal": "address:203.0.113.9"}
    assert re.search(
        r"address:203\.0\.113\.9 refused sign-in for [5-7] names in a day, none let in", first.title
    )
    # every try up to the alert is in it, each later one in a later alert
    covered = set(first.event_uids).union(*(a.event_uids for a in more))
    assert covered == {e["metadata"]["uid"] for e in tries}
    # an address someone signs in from (an office's) is not named for its typos
    office = [sign_in(at, "bob", "203.0.113.9", ok=True, sub=ALICE), *tries]
    assert not [a for a in run(office)[1] if "address:" in str(dict(a.group))]


def test_only_decisions_have_a_principal() -> None:
    finding = dict(request(T0), class_uid=2004)
    assert principal_of(finding) is None
    assert principal_of(request(T0)) == ALICE
    assert principal_of(sign_in(T0, "mallory", "1.2.3.4", ok=False)) == "login:mallory"
    assert principal_of(call(T0, "storefront", "/orders/1")) == "storefront"


def test_memory_is_bounded() -> None:
    detector, _ = run(
        [request(T0 + timedelta(seconds=i), sub=f"{i:032x}") for i in range(50)], max_principals=10
    )
    assert len(detector._baselines) == 10


@settings(max_examples=100)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "time": st.integers(0, 10**13),
                "class_uid": st.sampled_from([3002, 3003, 6003, 2004, 1]),
                "unmapped": st.fixed_dictionaries(
                    {
                        "trustmesh": st.dictionaries(
                            st.sampled_from(["sub", "decision", "jti", "attributes", "peer_spiffe_id"]),
                            st.one_of(st.text(max_size=8), st.sampled_from(["allow", "deny"]), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
                        )
                    }
                ),
            }
        ),
        max_size=30,
    )
)  # fmt: skip
def test_any_event_shape_is_taken_or_ignored(stream: list[dict[str, Any]]) -> None:
    """What the collector stored is all the detector sees: whatever its shape, nothing
    raises (a fuzz target)."""
    detector = AnomalyDetector(AnomalySettings(learning_ms=0))
    for event in stream:
        detector.observe(event)
    detector.flush()


def test_the_declaration_turns_it_on_and_tunes_it() -> None:
    base = "trust_domain: shop.test\nservices: {orders: {run: 'shop.orders:app'}}\naudit: {}\n"
    on = detector_for(parse_config(base, source="t.yaml").detection, None)
    assert isinstance(on.anomalies, AnomalyDetector)
    assert on.memory_ms >= 86_400_000  # a warm start replays a day of baselines
    tuned = parse_config(
        base + "detection: {anomaly: {window: 5m, learning: 2h, threshold: 4}}\n", source="t.yaml"
    )
    anomalies = detector_for(tuned.detection, None).anomalies
    assert isinstance(anomalies, AnomalyDetector)
    assert anomalies.settings.window_ms == 300_000
    assert anomalies.settings.learning_ms == 7_200_000
    off = parse_config(base + "detection: {anomaly: {enabled: false}}\n", source="t.yaml")
    assert detector_for(off.detection, None).anomalies is None


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from identity_for(collector_config(), tmp_path_factory.mktemp("identity"))


async def test_the_collector_alerts_through_its_alert_path(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """Delivered like any events, stored as an alert the operator lists, explained."""
    tries = [
        sign_in(T0 + timedelta(minutes=3 * i), f"user{i}", "203.0.113.77", ok=False)
        for i in range(5)
    ]
    async with collector_rig(identity, short_tmp / "state", collector_config(), tick=3600) as rig:
        status, answer = await rig.payments.call("POST", "/v1/events", {"events": tries})
        assert (status, answer["stored"]) == (200, 5)
        await rig.running.service.tick()  # the stream reaches the clock: windows judged
        status, answer = await rig.operator.call("GET", "/v1/alerts")
    (alert,) = [a for a in answer["alerts"] if a["rule_id"] == "anomaly"]
    assert alert["title"] == (
        "Anomaly: address:203.0.113.77 refused sign-in for 5 names in a day, none let in"
    )
    assert alert["group"] == {"principal": "address:203.0.113.77"}
    assert set(alert["event_uids"]) == {e["metadata"]["uid"] for e in tries}


def test_made_up_names_do_not_crowd_out_real_baselines() -> None:
    """Failed sign-ins with names no account has make no baselines: a flood of them
    leaves every real principal's baseline (and judgement) where it was."""
    flood = [
        sign_in(T0 + DAY + timedelta(seconds=i), f"nobody{i}", f"198.51.100.{i % 250}", ok=False)
        for i in range(500)
    ]
    detector, _ = run(habits() + flood, max_principals=10)
    assert list(detector._baselines) == [ALICE]


def test_an_endpoint_it_never_asked_needs_more_than_a_burst_to_count_as_a_surge() -> None:
    at = T0 + 2 * DAY + timedelta(hours=10)
    new = [request(at + timedelta(seconds=i), path="/orders/new-thing") for i in range(25)]
    assert run(habits() + new)[1] == []  # 25: not four times min_requests
    many = [request(at + timedelta(seconds=i), path="/orders/new-thing") for i in range(200)]
    (alert,) = run(habits() + many)[1]
    assert "× its usual rate" in alert.title
