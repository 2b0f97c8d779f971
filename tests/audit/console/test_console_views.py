"""What the console's pages show of records (trustmesh.audit.console.views): the events
page's filters refused with a UsageError (a 400) unless well-formed, the audit Query
they stand for, rows that tolerate whatever a workload reported and keep its markup as
plain text (escaping is the template's job), and a trace's spans in tree order."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from auditkit import call, gateway_refusal

from trustmesh import events
from trustmesh.audit.console.views import event_query, event_row, span_rows, when
from trustmesh.audit.search import Query
from trustmesh.errors import UsageError
from trustmesh.reasons import Reason

NOW = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SCRIPT = "<script>alert(1)</script>"


# --- the events page's filters ----------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"decision": "bogus"},
        {"decision": "ALLOW"},
        {"decision": "would-deny"},
        {"class_uid": "60a3"},
        {"class_uid": "-6003"},
        {"class_uid": "6003.0"},
        {"class_uid": " 6003"},
        {"class_uid": "1234567"},
        {"trace_id": "not-hex"},
        {"trace_id": TRACE.upper()},
        {"trace_id": TRACE[:-1]},
        {"trace_id": TRACE + "0"},
        {"trace_id": "z" * 32},
        {"minutes": "0"},
        {"minutes": "100001"},
        {"minutes": "-5"},
        {"minutes": "1.5"},
        {"minutes": "abc"},
        {"reason": "r" * 257},
        {"principal": "p" * 257},
    ],
    ids=lambda p: f"{next(iter(p))}={next(iter(p.values()))[:12]}",
)
def test_a_bad_filter_is_refused_with_a_usage_error(params: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        event_query(params, NOW)


@pytest.mark.parametrize("params", [{"class_uid": "²"}, {"minutes": "²"}])
def test_a_superscript_digit_is_a_bad_filter(params: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        event_query(params, NOW)


def test_the_filters_make_the_audit_query_newest_first() -> None:
    params = {
        "decision": "deny",
        "reason": "policy-deny",
        "principal": "spiffe://shop.example/orders",
        "class_uid": "6003",
        "trace_id": TRACE,
        "minutes": "30",
    }
    assert event_query(params, NOW) == Query(
        since=NOW - dt.timedelta(minutes=30),
        class_uid=6003,
        decision="deny",
        trace_id=TRACE,
        after_seq=None,
        newest_first=True,
        limit=100,
        reason="policy-deny",
        principal="spiffe://shop.example/orders",
    )


def test_a_feed_asks_for_what_came_after_oldest_first() -> None:
    assert event_query({}, NOW, after=41, limit=50) == Query(
        after_seq=41, newest_first=False, limit=50
    )


def test_empty_filters_and_the_limits_themselves_are_accepted() -> None:
    assert event_query({k: "" for k in ("decision", "reason", "minutes")}, NOW) == Query(
        newest_first=True
    )
    edges = event_query(
        {"minutes": "100000", "class_uid": "999999", "reason": "r" * 256, "principal": "p" * 256},
        NOW,
    )
    assert edges.since == NOW - dt.timedelta(minutes=100_000)
    assert edges.class_uid == 999_999
    assert event_query({"minutes": "1"}, NOW).since == NOW - dt.timedelta(minutes=1)


# --- an event's row ---------------------------------------------------------------------


def test_a_row_shows_what_the_event_says() -> None:
    event = gateway_refusal(Reason.POLICY_DENY, 0)
    event["seq"] = 17
    row = event_row(event)
    assert row["seq"] == "17"
    assert row["uid"] == event["metadata"]["uid"]
    assert row["time"] == "2026-01-05 12:00:00.000Z"
    assert row["component"] == "gateway"
    assert row["decision"] == "deny"
    assert row["reason"] == "policy-deny"
    assert row["who"] == ""  # no user, no calling workload, no address recorded
    assert row["message"] == "refused"
    assert row["path"] == "/orders"
    assert row["trace_id"] == TRACE


def test_who_is_the_subject_then_the_peer_then_the_address() -> None:
    event = gateway_refusal(Reason.POLICY_DENY, 0)
    event["src_endpoint"] = {"ip": "192.0.2.7"}
    assert event_row(event)["who"] == "192.0.2.7"  # not the gateway that decided
    event = call(events.Decision.DENY, Reason.POLICY_DENY, 0, caller="spiffe://x/caller")
    event["src_endpoint"] = {"ip": "192.0.2.7"}
    assert event_row(event)["who"] == "spiffe://x/caller"
    event["unmapped"]["trustmesh"]["sub"] = "u-42"
    assert event_row(event)["who"] == "u-42"


def test_markup_is_kept_as_plain_text_for_the_template_to_escape() -> None:
    event = gateway_refusal(Reason.POLICY_DENY, 0)
    event["message"] = SCRIPT
    event["unmapped"]["trustmesh"]["reason"] = '"><img src=x onerror=alert(1)>'
    event["unmapped"]["trustmesh"]["attributes"]["path"] = "/a?<b>&amp;"
    row = event_row(event)
    assert row["message"] == SCRIPT
    assert row["reason"] == '"><img src=x onerror=alert(1)>'
    assert row["path"] == "/a?<b>&amp;"


def test_every_value_is_cut_to_300_characters() -> None:
    event = gateway_refusal(Reason.POLICY_DENY, 0)
    event["message"] = "m" * 10_000
    event["unmapped"]["trustmesh"]["reason"] = "r" * 301
    event["unmapped"]["trustmesh"]["attributes"]["path"] = "/" + "p" * 5000
    row = event_row(event)
    assert row["message"] == "m" * 300
    assert row["reason"] == "r" * 300
    assert len(row["path"]) == 300


ROW_KEYS = {
    "seq",
    "uid",
    "time",
    "component",
    "class",
    "decision",
    "reason",
    "who",
    "message",
    "path",
    "trace_id",
}


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"unmapped": None, "metadata": None},
        {"unmapped": {}, "metadata": {}},
        {"unmapped": {"trustmesh": None}},
        {"unmapped": {"trustmesh": "a string"}},
        {"unmapped": {"trustmesh": ["a", "list"]}},
        {"unmapped": {"trustmesh": {"attributes": "not an object", "trace_id": 7}}},
        {"unmapped": {"trustmesh": {"attributes": ["/p"], "trace_id": ["x"]}}},
        {"metadata": {"product": "a string"}},
        {"metadata": {"product": {"feature": "a string"}}},
        {"metadata": {"product": {"feature": ["x"]}}},
        {"time": "yesterday", "seq": None, "message": 12, "class_name": ["x"]},
        {"time": 1.5},
        {"time": True},
    ],
)
def test_a_row_tolerates_missing_and_odd_fields(event: dict[str, Any]) -> None:
    row = event_row(event)
    assert set(row) == ROW_KEYS
    assert all(isinstance(value, str) for value in row.values())
    assert row["time"] == ""
    assert row["trace_id"] == ""
    assert row["path"] == ""


@pytest.mark.parametrize("unmapped", [["x"], "x", 5])
def test_a_row_tolerates_an_unmapped_that_is_not_an_object(unmapped: object) -> None:
    row = event_row({"unmapped": unmapped, "message": "m"})
    assert row["message"] == "m"


def test_when_formats_epoch_milliseconds_only() -> None:
    assert when(0) == "1970-01-01 00:00:00.000Z"
    assert when(1_767_614_400_123) == "2026-01-05 12:00:00.123Z"
    assert when("1767614400123") == ""
    assert when(None) == ""
    assert when(True) == ""


# --- a trace's spans --------------------------------------------------------------------


def span(span_id: str, parent: str | None, start_ms: int, **extra: Any) -> dict[str, Any]:
    base = 1_767_614_400_000 * 1_000_000
    return {
        "span_id": span_id,
        "parent_span_id": parent,
        "start_ns": base + start_ms * 1_000_000,
        "end_ns": base + (start_ms + 5) * 1_000_000,
        "service": "svc-" + span_id,
        "kind": "server",
        "name": "GET /x",
        "attributes": {},
        **extra,
    }


def test_spans_in_tree_order_with_depth_and_orphans_even_on_a_loop_of_parents() -> None:
    spans = [
        span("b", "a", 40),  # a, b and c: each the parent of the next, in a loop
        span("d", "r", 20),
        span("c", "b", 50),
        span("o", "gone", 15),  # its parent was never reported
        span("a", "c", 30),
        span("r", None, 10),
        span("r", None, 99, name="the same span id again"),
    ]
    rows = span_rows(spans)
    assert [(r["service"], r["depth"], r["orphan"]) for r in rows] == [
        ("svc-r", 0, False),
        ("svc-d", 1, False),
        ("svc-o", 0, True),
        ("svc-a", 0, True),
        ("svc-b", 1, False),
        ("svc-c", 2, False),
    ]
    assert rows[0]["name"] == "GET /x"  # the first report of a span id is kept
    assert rows[0]["offset"] == "+0.0 ms"
    assert rows[1]["offset"] == "+10.0 ms"
    assert rows[1]["duration"] == "5.0 ms"


def test_a_deep_trace_is_drawn_at_most_twelve_deep() -> None:
    spans = [span("s0", None, 0)] + [span(f"s{i}", f"s{i - 1}", i) for i in range(1, 40)]
    rows = span_rows(spans)
    assert len(rows) == 40
    assert [r["depth"] for r in rows] == [min(i, 12) for i in range(40)]


def test_a_span_row_shows_its_decision_status_and_failure() -> None:
    rows = span_rows(
        [
            span(
                "a",
                None,
                0,
                status="error",
                status_message=SCRIPT,
                attributes={
                    "trustmesh.decision": "deny",
                    "trustmesh.reason": "policy-deny",
                    "http.response.status_code": 403,
                },
            ),
            span("b", "a", 1, status_message="ignored: not an error"),
            span("c", "a", 2, attributes={"http.response.status_code": "403"}),
        ]
    )
    assert (rows[0]["decision"], rows[0]["reason"], rows[0]["status"]) == (
        "deny",
        "policy-deny",
        "403",
    )
    assert rows[0]["failed"] == SCRIPT  # as text: the template escapes it
    assert rows[1]["failed"] == ""
    assert rows[2]["status"] == ""


def test_no_spans_no_rows() -> None:
    assert span_rows([]) == []
