from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.events import Decision, EventClass, event
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
