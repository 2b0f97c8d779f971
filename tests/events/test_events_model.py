from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

import trustmesh
from trustmesh import events
from trustmesh.errors import UsageError
from trustmesh.events import (
    Decision,
    Endpoint,
    Event,
    EventClass,
    Severity,
    Status,
)
from trustmesh.reasons import Reason

Make = Callable[..., Event]
NOW_MS = 1740832245123


def test_public_api_is_pinned() -> None:
    assert events.__all__ == [
        "OCSF_VERSION",
        "AttributeValue",
        "Decision",
        "Endpoint",
        "Event",
        "EventClass",
        "EventSink",
        "FanoutSink",
        "JsonLinesSink",
        "MemorySink",
        "Recorder",
        "Severity",
        "Shape",
        "Status",
        "event",
        "new_uid",
        "read_events",
        "restamp",
        "set_trace_source",
        "shape_of",
    ]


def test_restamp_is_a_new_occurrence_checked_like_event() -> None:
    import datetime as dt

    from trustmesh.errors import UsageError

    template = events.event(
        events.EventClass.API_ACTIVITY,
        activity_id=99,
        activity_name="Other",
        component="payments",
        decision=events.Decision.ALLOW,
        reason="policy-allow",
        message="call allowed",
        peer_spiffe_id="spiffe://x.example/orders",
    )
    later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    again = events.restamp(template, now=later, trace_id="a" * 32, attributes={"path": "/x"})
    assert again.uid != template.uid
    assert again.time == later
    assert again.reason == template.reason
    assert again.attributes["path"] == "/x"
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    with pytest.raises(UsageError):
        events.restamp(template, attributes={"path": "/charges/" + jwt_like})
    with pytest.raises(UsageError):
        events.restamp(template, attributes={"password": "x"})
    with pytest.raises(UsageError):
        events.restamp(template, trace_id="a\nb")
    with pytest.raises(UsageError):
        events.restamp(template, now=dt.datetime(2030, 1, 1))  # naive


@pytest.mark.parametrize(
    ("cls", "class_uid", "class_name", "category_uid", "category_name"),
    [
        (EventClass.AUTHENTICATION, 3002, "Authentication", 3, "Identity & Access Management"),
        (
            EventClass.AUTHORIZE_SESSION,
            3003,
            "Authorize Session",
            3,
            "Identity & Access Management",
        ),
        (
            EventClass.ENTITY_MANAGEMENT,
            3004,
            "Entity Management",
            3,
            "Identity & Access Management",
        ),
        (EventClass.API_ACTIVITY, 6003, "API Activity", 6, "Application Activity"),
        (EventClass.DETECTION_FINDING, 2004, "Detection Finding", 2, "Findings"),
    ],
)
def test_class_and_category(
    cls: EventClass,
    class_uid: int,
    class_name: str,
    category_uid: int,
    category_name: str,
    make: Make,
) -> None:
    ocsf = make(cls=cls, activity_id=1, activity_name="Create").to_ocsf()
    assert ocsf["class_uid"] == class_uid
    assert ocsf["class_name"] == class_name
    assert ocsf["category_uid"] == category_uid
    assert ocsf["category_name"] == category_name
    assert ocsf["activity_id"] == 1
    assert ocsf["activity_name"] == "Create"
    assert ocsf["type_uid"] == class_uid * 100 + 1


@pytest.mark.parametrize("activity_id", [0, 1, 4, 99])
def test_type_uid_arithmetic(activity_id: int, make: Make) -> None:
    ev = make(cls=EventClass.ENTITY_MANAGEMENT, activity_id=activity_id, activity_name="X")
    assert ev.type_uid == 3004 * 100 + activity_id
    assert ev.to_ocsf()["type_uid"] == 300400 + activity_id


@pytest.mark.parametrize("activity_id", [-1, 100, 255])
def test_activity_id_out_of_range_is_refused(activity_id: int, make: Make) -> None:
    with pytest.raises(UsageError, match="activity_id"):
        make(activity_id=activity_id)


def test_time_is_epoch_milliseconds_from_the_given_clock(make: Make, now: datetime) -> None:
    ocsf = make(now=now).to_ocsf()
    assert ocsf["time"] == NOW_MS
    assert isinstance(ocsf["time"], int)
    # Another zone, same instant: same time.
    plus_two = now.astimezone(timezone(timedelta(hours=2)))
    assert make(now=plus_two).to_ocsf()["time"] == NOW_MS
    assert make(now=datetime(1970, 1, 1, tzinfo=UTC)).to_ocsf()["time"] == 0


def test_time_defaults_to_now(make: Make) -> None:
    before = datetime.now(UTC)
    ev = make(now=None)
    after = datetime.now(UTC)
    assert before <= ev.time <= after


def test_naive_time_is_refused(make: Make) -> None:
    with pytest.raises(UsageError, match="time"):
        make(now=datetime(2025, 1, 1))  # naive on purpose


@pytest.mark.parametrize(
    ("decision", "status_id", "status", "severity_id"),
    [
        (Decision.ALLOW, 1, "Success", 1),
        (Decision.DENY, 2, "Failure", 3),
        (Decision.ERROR, 2, "Failure", 3),
    ],
)
def test_status_and_severity_follow_the_decision(
    decision: Decision, status_id: int, status: str, severity_id: int, make: Make
) -> None:
    ocsf = make(decision=decision).to_ocsf()
    assert (ocsf["status_id"], ocsf["status"]) == (status_id, status)
    assert ocsf["severity_id"] == severity_id
    assert ocsf["unmapped"]["trustmesh"]["decision"] == decision.value


def test_status_and_severity_can_be_given(make: Make) -> None:
    ocsf = make(decision=Decision.ALLOW, status=Status.OTHER, severity=Severity.CRITICAL).to_ocsf()
    assert (ocsf["status_id"], ocsf["status"]) == (99, "Other")
    assert (ocsf["severity_id"], ocsf["severity"]) == (5, "Critical")


def test_decision_from_string_and_unknown_decision(make: Make) -> None:
    assert make(decision="allow").decision is Decision.ALLOW
    with pytest.raises(UsageError, match="decision"):
        make(decision="maybe")


def test_reason_is_the_status_detail(make: Make) -> None:
    ocsf = make(reason=Reason.TOKEN_EXPIRED).to_ocsf()
    assert ocsf["status_detail"] == "token-expired"
    assert ocsf["unmapped"]["trustmesh"]["reason"] == "token-expired"
    assert type(ocsf["status_detail"]) is str
    assert make(reason="token-expired").reason is Reason.TOKEN_EXPIRED  # by value
    with pytest.raises(UsageError, match="reason"):  # the vocabulary is closed
        make(reason="custom-reason-2")


@pytest.mark.parametrize("reason", ["", "Token-Expired", "token_expired", "a--b", "-a", "x" * 65])
def test_reason_must_be_kebab_case(reason: str, make: Make) -> None:
    with pytest.raises(UsageError, match="reason"):
        make(reason=reason)


def test_metadata_and_actor(sample: Event) -> None:
    ocsf = sample.to_ocsf()
    meta = ocsf["metadata"]
    assert meta["version"] == "1.3.0"
    assert len(meta["uid"]) == 32
    int(meta["uid"], 16)
    assert meta["correlation_uid"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert meta["product"] == {
        "name": "trustmesh",
        "vendor_name": "trustmesh",
        "version": trustmesh.__version__,
        "feature": {"name": "gateway"},
    }
    assert ocsf["actor"] == {
        "app_name": "gateway",
        "app_uid": "spiffe://shop.example/gateway",
        "user": {"uid": "alice"},
    }
    assert ocsf["message"] == "GET /orders/42 denied by policy"


def test_event_ids_are_unique_and_stable(make: Make) -> None:
    ev = make()
    assert ev.to_ocsf()["metadata"]["uid"] == ev.to_ocsf()["metadata"]["uid"]
    assert len({make().uid for _ in range(100)}) == 100


def test_event_ids_are_uuid7_and_sort_by_when_they_were_made(make: Make) -> None:
    import time
    import uuid

    made = [events.new_uid((NOW_MS + i) / 1000) for i in range(50)]  # a ms apart
    assert made == sorted(made)
    assert len(set(made)) == 50
    for uid in made:
        parsed = uuid.UUID(uid)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert int(made[0][:12], 16) == NOW_MS
    # the same millisecond: 74 random bits apart
    same = {events.new_uid(NOW_MS / 1000) for _ in range(2000)}
    assert len(same) == 2000
    assert {u[:12] for u in same} == {f"{NOW_MS:012x}"}
    assert {u[16] for u in same} == set("89ab")  # the variant's bits, random below them
    # what producers make: an event, and a restamped one, later sorts later
    first = make()
    time.sleep(0.002)
    later = events.restamp(first, now=first.time - timedelta(days=1))  # its time: any
    assert first.uid < later.uid
    assert uuid.UUID(later.uid).version == 7


def test_trustmesh_fields_under_unmapped(sample: Event) -> None:
    assert sample.to_ocsf()["unmapped"] == {
        "trustmesh": {
            "spiffe_id": "spiffe://shop.example/gateway",
            "peer_spiffe_id": "spiffe://shop.example/orders",
            "sub": "alice",
            "client_id": "storefront",
            "jti": "7f9c2ba4e88f827d616045507605853e",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "decision": "deny",
            "reason": "policy-deny",
            "attributes": {
                "route": "/orders/{id}",
                "attempt": 2,
                "cached": False,
                "tenant": None,
            },
        }
    }


def test_absent_fields_are_omitted(make: Make) -> None:
    ocsf = make().to_ocsf()
    assert ocsf["unmapped"] == {"trustmesh": {"decision": "deny", "reason": "policy-deny"}}
    assert ocsf["actor"] == {"app_name": "gateway"}
    assert "correlation_uid" not in ocsf["metadata"]
    assert "src_endpoint" not in ocsf
    assert "dst_endpoint" not in ocsf
    assert None not in _all_values(ocsf)


def _all_values(obj: object) -> list[object]:
    if isinstance(obj, dict):
        return [v for item in obj.values() for v in _all_values(item)]
    return [obj]


def test_endpoints(make: Make) -> None:
    ocsf = make(
        src=Endpoint(ip="2001:DB8::1", port=51234),
        dst=Endpoint(ip="127.0.0.1", port=8443, svc_name="orders", uid="spiffe://d/orders"),
    ).to_ocsf()
    assert ocsf["src_endpoint"] == {"ip": "2001:db8::1", "port": 51234}
    assert ocsf["dst_endpoint"] == {
        "ip": "127.0.0.1",
        "port": 8443,
        "svc_name": "orders",
        "uid": "spiffe://d/orders",
    }


@pytest.mark.parametrize(
    "kwargs", [{"ip": "10.0.0.300"}, {"port": 70000}, {"port": -1}, {"svc_name": "a\nb"}]
)
def test_bad_endpoint_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Endpoint.model_validate(kwargs)


def test_event_is_frozen_and_strict(sample: Event) -> None:
    with pytest.raises(ValidationError):
        sample.sub = "mallory"  # type: ignore[misc]
    with pytest.raises(TypeError):
        sample.attributes["password"] = "hunter2"  # type: ignore[index]
    with pytest.raises(ValidationError, match="extra"):
        Event.model_validate({**sample.model_dump(), "token": "x"})


def test_model_dump_round_trips(sample: Event) -> None:
    again = Event.model_validate_json(sample.model_dump_json())
    assert again == sample
    assert again.to_ocsf() == sample.to_ocsf()


def test_to_json_is_one_compact_ascii_line(make: Make) -> None:
    ev = make(message="line one\nline two\r\n\u2028 caf\u00e9 \x1b[31m", sub="bob")
    text = ev.to_json()
    assert "\n" not in text
    assert "\r" not in text
    assert text.isascii()
    assert ", " not in text
    assert ": " not in text
    assert json.loads(text) == ev.to_ocsf()
    assert json.loads(text)["message"] == "line one\nline two\r\n\u2028 caf\u00e9 \x1b[31m"


@pytest.mark.parametrize(
    "field", ["component", "activity_name", "spiffe_id", "sub", "client_id", "jti", "trace_id"]
)
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b", "a\x1b[2Jb", "a\u2028b", "a\u202eb"])
def test_control_characters_in_ids_are_refused(field: str, bad: str, make: Make) -> None:
    with pytest.raises(UsageError, match=field):
        make(**{field: bad})


def test_control_characters_in_reason_are_refused(make: Make) -> None:
    with pytest.raises(UsageError, match="reason"):
        make(reason="policy-deny\n")


def test_empty_ids_and_oversized_text_are_refused(make: Make) -> None:
    with pytest.raises(UsageError, match="sub"):
        make(sub="")
    with pytest.raises(UsageError, match="message"):
        make(message="x" * 4097)
    with pytest.raises(UsageError, match="attributes"):
        make(attributes={f"k{i}": i for i in range(33)})


@pytest.mark.parametrize("key", ["", "1abc", "has space", "k\n", "ключ", "x" * 65])
def test_bad_attribute_keys_are_refused(key: str, make: Make) -> None:
    with pytest.raises(UsageError, match="attributes"):
        make(attributes={key: "v"})


def test_attribute_values_must_be_scalars(make: Make) -> None:
    with pytest.raises(UsageError, match="attributes"):
        make(attributes={"nested": {"a": 1}})
    with pytest.raises(UsageError, match="attributes"):
        make(attributes={"list": [1, 2]})
    with pytest.raises(UsageError, match="attributes"):
        make(attributes={"ratio": 0.5})
    with pytest.raises(UsageError, match="64 bits"):
        make(attributes={"huge": 10**5000})
    with pytest.raises(UsageError, match="attributes"):
        make(attributes={1: "x"})
    with pytest.raises(UsageError, match="attributes"):
        make(attributes=[("a", "b")])
    assert make(attributes={"flag": True}).attributes["flag"] is True
    assert make(attributes={"n": -(2**63)}).attributes["n"] == -(2**63)
