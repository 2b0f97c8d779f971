"""events.Recorder: the one way components build, cache and emit events — the shape from
the code, the decision from the code unless given, one validated template per shape,
each occurrence restamped, and a value no event may carry withheld, never the event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trustmesh import events
from trustmesh.errors import UsageError
from trustmesh.events import Decision, EventClass, Recorder, shape_of
from trustmesh.reasons import Activity, Reason

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"


class Ticking:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _recorder(**kwargs: object) -> tuple[Recorder, events.MemorySink]:
    sink = events.MemorySink()
    return Recorder(sink, component="test", spiffe_id="spiffe://t.example/x", **kwargs), sink  # type: ignore[arg-type]


def test_each_occurrence_is_its_own_event_from_one_template() -> None:
    recorder, sink = _recorder(clock=Ticking())
    for path in ("/a", "/b"):
        recorder.record(Reason.POLICY_DENY, "denied", sub="alice", attributes={"path": path})
    first, second = sink.events
    assert (first.reason, first.decision, first.sub) == (Reason.POLICY_DENY, Decision.DENY, "alice")
    assert [e.attributes["path"] for e in sink.events] == ["/a", "/b"]
    assert first.uid != second.uid
    assert second.time - first.time == timedelta(seconds=1)
    assert len(recorder._templates) == 1  # validated once for the shape
    recorder.record(Reason.POLICY_DENY, "denied", sub="bob")
    assert len(recorder._templates) == 2
    assert sink.events[-1].spiffe_id == "spiffe://t.example/x"


def test_the_decision_follows_the_code_unless_given() -> None:
    recorder, sink = _recorder()
    recorder.record(Activity.KEY_CREATED, "key created")
    recorder.record(Reason.RATE_LIMITED, "too many")
    recorder.record(Reason.REQUEST_FORWARDED, "forwarded")
    recorder.record(Reason.UPSTREAM_TIMEOUT, "late", decision=Decision.ERROR)
    assert [e.decision for e in sink.events] == [
        Decision.ALLOW,
        Decision.DENY,
        Decision.ALLOW,
        Decision.ERROR,
    ]


def test_the_shape_follows_the_code_then_the_component() -> None:
    assert shape_of(Activity.USER_LOCKED) == (EventClass.ENTITY_MANAGEMENT, 9, "Disable")
    assert shape_of(Reason.LOGIN_FAILED) == (EventClass.AUTHENTICATION, 1, "Logon")
    assert shape_of(Reason.POLICY_DENY) == (EventClass.API_ACTIVITY, 99, "Other")
    ticket = (EventClass.AUTHENTICATION, 4, "Service Ticket Request")
    recorder, sink = _recorder(default=ticket)
    recorder.record(Reason.TOKEN_INTROSPECTED, "introspected")
    recorder.record(Reason.ADMIN_DENIED, "not an operator")  # an API refusal everywhere
    recorder.record(Reason.POLICY_DENY, "x", shape=(EventClass.AUTHORIZE_SESSION, 99, "Other"))
    shapes = [(e.event_class, e.activity_id, e.activity_name) for e in sink.events]
    assert shapes == [
        ticket,
        (EventClass.API_ACTIVITY, 99, "Other"),
        (EventClass.AUTHORIZE_SESSION, 99, "Other"),
    ]


def test_a_secret_in_an_attribute_is_withheld_and_the_decision_kept() -> None:
    recorder, sink = _recorder()
    recorder.record(
        Reason.ROUTE_NOT_FOUND,
        "no route",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        attributes={"path": f"/x/{TOKEN}", "method": "GET"},
    )
    (event,) = sink.events
    assert dict(event.attributes) == {"path": "<withheld>", "method": "GET"}
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert TOKEN not in event.to_json()


def test_a_subject_no_event_may_carry_leaves_the_decision_without_it() -> None:
    recorder, sink = _recorder()
    recorder.record(Reason.POLICY_DENY, "denied", sub=TOKEN, client_id="shop")
    (event,) = sink.events
    assert event.reason is Reason.POLICY_DENY
    assert event.sub is None
    assert TOKEN not in event.to_json()


def test_a_reason_and_an_activity_spelled_alike_stay_apart() -> None:
    """``token-revoked`` is a refusal (a revoked token presented) and an activity (the
    provider revoking one): each keeps its own decision, shape and template."""
    ticket = (EventClass.AUTHENTICATION, 4, "Service Ticket Request")
    recorder, sink = _recorder()
    recorder.record(Reason.TOKEN_REVOKED, "token revoked")
    recorder.record(Activity.TOKEN_REVOKED, "token revoked")
    refused, revoked = sink.events
    assert (refused.reason, refused.decision) == (Reason.TOKEN_REVOKED, Decision.DENY)
    assert (revoked.reason, revoked.decision) == (Activity.TOKEN_REVOKED, Decision.ALLOW)
    assert type(refused.reason) is Reason
    assert type(revoked.reason) is Activity
    assert (refused.event_class, refused.activity_id) == (EventClass.API_ACTIVITY, 99)
    assert (revoked.event_class, revoked.activity_id, revoked.activity_name) == ticket


def test_build_makes_an_occurrence_that_write_emits() -> None:
    """A change builds its event before it is made (nothing written), then writes it."""
    recorder, sink = _recorder()
    made = recorder.build(
        Activity.KEY_CREATED, "key created", now=T0, attributes={"key_id": "k1"}, strict=True
    )
    assert sink.events == []
    assert (made.event_class, made.activity_id, made.activity_name) == (
        EventClass.ENTITY_MANAGEMENT,
        1,
        "Create",
    )
    assert (made.decision, made.time, dict(made.attributes)) == (
        Decision.ALLOW,
        T0,
        {"key_id": "k1"},
    )
    recorder.write(made)
    assert sink.events == [made]


def test_strict_refuses_what_no_event_may_carry_instead_of_withholding_it() -> None:
    recorder, sink = _recorder()
    with pytest.raises(UsageError):
        recorder.build(Activity.KEY_CREATED, "key created", attributes={"name": TOKEN}, strict=True)
    with pytest.raises(UsageError):
        recorder.build(Activity.KEY_CREATED, "key created", sub=TOKEN, strict=True)
    # the same values, not strict: the event is kept, the value withheld or left out
    assert recorder.build(Activity.KEY_CREATED, "key created", sub=TOKEN).sub is None
    kept = recorder.build(Activity.KEY_CREATED, "key created", attributes={"name": TOKEN})
    assert dict(kept.attributes) == {"name": "<withheld>"}
    # a template left without its subject is never handed to a strict build
    with pytest.raises(UsageError):
        recorder.build(Activity.KEY_CREATED, "key created", sub=TOKEN, strict=True)
    assert sink.events == []


def test_an_occurrence_is_rendered_once_and_a_copy_anew() -> None:
    """The event log and the audit spool write the same text, rendered once; a copy
    with a field changed renders its own."""
    recorder, _ = _recorder()
    event = recorder.record(Reason.POLICY_ALLOW, "call allowed", attributes={"n": 1})
    text = event.to_json()
    assert event.to_json() is text
    changed = event.model_copy(update={"message": "another"})
    assert '"message":"another"' in changed.to_json()
    assert event.model_copy().to_json() == text
    built = events.event(
        EventClass.API_ACTIVITY,
        activity_id=99,
        activity_name="Other",
        component="gateway",
        decision=Decision.ALLOW,
        reason=Reason.POLICY_ALLOW,
        message="built",
        now=T0,
    )
    assert built.to_json() is built.to_json()
