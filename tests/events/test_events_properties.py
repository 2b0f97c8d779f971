from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.events import Decision, Endpoint, EventClass, event, restamp
from trustmesh.reasons import Reason


# Identifiers: printable text without control, format, surrogate or separator characters
# (those are refused on purpose); free text: anything but lone surrogates.
def _not_secret_looking(value: str) -> bool:
    # what the model refuses on purpose (tested in test_events_secrets.py)
    return "-----BEGIN" not in value and "bearer" not in value.lower()


ids = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=40
).filter(_not_secret_looking)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200).filter(_not_secret_looking)
optional_id = st.none() | ids
attribute_values = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text
attribute_keys = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z").filter(
    lambda k: (
        not any(w in k for w in ("pass", "secret", "token", "auth", "key", "cookie"))
        and not any(w in k for w in ("credential", "bearer", "totp"))
    )
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1),  # naive: hypothesis bounds
    max_value=datetime(9999, 1, 1),
    timezones=st.just(UTC),
)


@settings(max_examples=300, deadline=None)
@given(
    cls=st.sampled_from(EventClass),
    activity_id=st.integers(0, 99),
    activity_name=ids,
    component=ids,
    decision=st.sampled_from(Decision),
    reason=st.sampled_from(Reason),
    message=text,
    now=times,
    spiffe_id=optional_id,
    peer_spiffe_id=optional_id,
    sub=optional_id,
    client_id=optional_id,
    jti=optional_id,
    trace_id=optional_id,
    attributes=st.dictionaries(attribute_keys, attribute_values, max_size=5),
)
def test_safe_events_round_trip_through_json(
    cls: EventClass,
    activity_id: int,
    activity_name: str,
    component: str,
    decision: Decision,
    reason: Reason,
    message: str,
    now: datetime,
    spiffe_id: str | None,
    peer_spiffe_id: str | None,
    sub: str | None,
    client_id: str | None,
    jti: str | None,
    trace_id: str | None,
    attributes: dict[str, str | int | bool | None],
) -> None:
    ev = event(
        cls,
        activity_id=activity_id,
        activity_name=activity_name,
        component=component,
        decision=decision,
        reason=reason,
        message=message,
        now=now,
        spiffe_id=spiffe_id,
        peer_spiffe_id=peer_spiffe_id,
        sub=sub,
        client_id=client_id,
        jti=jti,
        trace_id=trace_id,
        attributes=attributes,
    )
    line = ev.to_json()
    assert "\n" not in line
    assert line.isascii()
    parsed = json.loads(line)
    assert parsed == ev.to_ocsf()
    given_fields = {
        "spiffe_id": spiffe_id,
        "peer_spiffe_id": peer_spiffe_id,
        "sub": sub,
        "client_id": client_id,
        "jti": jti,
        "trace_id": trace_id,
    }
    expected = {k: v for k, v in given_fields.items() if v is not None}
    expected |= {"decision": decision.value, "reason": reason.value}
    if attributes:
        expected["attributes"] = attributes
    assert parsed["unmapped"]["trustmesh"] == expected
    assert parsed["message"] == message
    assert parsed["type_uid"] == int(cls) * 100 + activity_id
    micros = (now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parsed["time"] * 1000 <= micros < (parsed["time"] + 1) * 1000


@settings(max_examples=300, deadline=None)
@given(
    message=text,
    spiffe_id=optional_id,
    template_trace=optional_id,
    trace_id=optional_id,
    port=st.none() | st.integers(0, 65535),
    ip=st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]),
    attributes=st.none() | st.dictionaries(attribute_keys, attribute_values, max_size=5),
    now=times,
    jti=optional_id,
)
def test_a_restamped_event_renders_exactly_as_one_built_anew(
    message: str,
    spiffe_id: str | None,
    template_trace: str | None,
    trace_id: str | None,
    port: int | None,
    ip: str,
    attributes: dict[str, str | int | bool | None] | None,
    now: datetime,
    jti: str | None,
) -> None:
    template = event(
        EventClass.API_ACTIVITY,
        activity_id=99,
        activity_name="Other",
        component="payments",
        decision=Decision.ALLOW,
        reason=Reason.POLICY_ALLOW,
        message=message,
        spiffe_id=spiffe_id,
        trace_id=template_trace,
    )
    src = Endpoint(ip=ip, port=port) if port is not None else None
    for _ in range(2):  # the second render comes from the cached skeleton
        stamped = restamp(
            template, now=now, trace_id=trace_id, src=src, attributes=attributes, jti=jti
        )
        line = stamped.to_json()
        assert line == json.dumps(stamped.to_ocsf(), separators=(",", ":"), ensure_ascii=True)
        assert json.loads(line) == stamped.to_ocsf()
    changed = stamped.model_copy(update={"message": "changed"})
    assert json.loads(changed.to_json())["message"] == "changed"
