"""The collector's span store over its real mTLS listener: a producer's OTLP/HTTP request
(encoded by the OpenTelemetry exporter itself) is stored and read back by the operator
with the trace's audit events; a retried delivery is stored once; a request that is not
one stores nothing; an invalid span is refused alone (partial success); each span is
stored with the mTLS peer as its reporter, whatever it claims, and a workload cannot
make another's span a duplicate; only the operator reads a trace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from collectorrig import OPERATOR, PAYMENTS, CollectorRig, collector_config, collector_rig
from collectorrig import identity_for as identity_rig
from opentelemetry.sdk.trace import Event
from opentelemetry.trace import SpanKind, Status, StatusCode
from otlpwire import encode_spans
from spanrig import (
    T0_NS,
    TRACE,
    TRACE_HEX,
    encoded,
    post_otlp,
    response_of,
    span,
    stored_spans,
)

from trustmesh import events
from trustmesh._proto.otlp import ExportTraceServiceRequest
from trustmesh.audit.__main__ import _detected
from trustmesh.audit.app import MAX_BODY
from trustmesh.audit.otlp import MAX_SPANS
from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_rig(collector_config(), short_tmp / "identity")


@pytest.fixture
async def rig(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[CollectorRig]:
    async with collector_rig(
        identity, short_tmp / "state", collector_config(), tick=3600
    ) as running:
        yield running


def _decision(trace_id: str) -> dict[str, object]:
    """A gateway's refusal in that trace, as the gateway records it."""
    recorder = events.Recorder(
        events.MemorySink(), component="gateway", spiffe_id="spiffe://trustmesh.local/gateway"
    )
    return recorder.record(
        Reason.LOGIN_FAILED, "refused", decision=events.Decision.DENY, trace_id=trace_id
    ).to_ocsf()


async def test_a_producers_spans_are_read_back_with_the_traces_events(rig: CollectorRig) -> None:
    root = span(
        0x1111,
        "POST /orders",
        attributes={"http.request.method": "POST", "http.response.status_code": 403},
        status=Status(StatusCode.ERROR, "policy-deny"),
    )
    child = span(
        0x2222,
        "GET /charges/{id}",
        parent=0x1111,
        kind=SpanKind.CLIENT,
        start=T0_NS + 10,
        end=T0_NS + 500,
        attributes={"tags": ("a", "b"), "ratio": 0.5, "long": "x" * 5000},
        events=[Event("retry", {"attempt": 2}, timestamp=T0_NS + 20)],
    )
    status, media, raw = await post_otlp(rig.payments, encoded(child, root))
    assert (status, media) == (200, "application/x-protobuf")
    assert not response_of(raw).HasField("partial_success")
    decision = _decision(TRACE_HEX)
    status, _ = await rig.payments.call("POST", "/v1/events", {"events": [decision]})
    assert status == 200

    status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert status == 200
    assert set(trace) == {"trace_id", "spans", "events"}
    assert trace["trace_id"] == TRACE_HEX
    assert trace["spans"] == [
        {
            "trace_id": TRACE_HEX,
            "span_id": "0000000000001111",
            "parent_span_id": None,
            "name": "POST /orders",
            "kind": "server",
            "service": "payments",
            "reporter": PAYMENTS,
            "start_ns": T0_NS,
            "end_ns": T0_NS + 1_000_000,
            "status": "error",
            "status_message": "policy-deny",
            "attributes": {"http.request.method": "POST", "http.response.status_code": 403},
            "events": [],
        },
        {
            "trace_id": TRACE_HEX,
            "span_id": "0000000000002222",
            "parent_span_id": "0000000000001111",
            "name": "GET /charges/{id}",
            "kind": "client",
            "service": "payments",
            "reporter": PAYMENTS,
            "start_ns": T0_NS + 10,
            "end_ns": T0_NS + 500,
            "status": "unset",
            "status_message": None,
            "attributes": {"tags": ["a", "b"], "ratio": 0.5, "long": "x" * 1024},
            "events": [{"name": "retry", "time_ns": T0_NS + 20, "attributes": {"attempt": 2}}],
        },
    ]
    assert [e["metadata"]["uid"] for e in trace["events"]] == [decision["metadata"]["uid"]]
    status, searched = await rig.operator.call("GET", f"/v1/events?trace_id={TRACE_HEX}")
    assert trace["events"] == searched["events"]
    read = [e for e in rig.sink.events if e.attributes.get("action") == "audit-trace"]
    assert [e.reason for e in read] == ["admin-read"]

    status, unknown = await rig.operator.call("GET", f"/v1/traces/{'ab' * 16}")
    assert (status, unknown) == (200, {"trace_id": "ab" * 16, "spans": [], "events": []})


async def test_otlp_json_is_taken_and_answered_in_json(rig: CollectorRig) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "orders"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE_HEX,
                                "spanId": "00000000000000aa",
                                "name": "charge",
                                "kind": 3,
                                "startTimeUnixNano": str(T0_NS),
                                "endTimeUnixNano": str(T0_NS + 5),
                                "unknownField": True,
                            },
                            {"traceId": "00" * 16, "spanId": "00000000000000bb", "name": "x"},
                        ]
                    }
                ],
            }
        ]
    }
    status, media, raw = await post_otlp(
        rig.payments, json.dumps(body).encode(), "application/json"
    )
    assert (status, media) == (200, "application/json")
    assert json.loads(raw)["partialSuccess"]["rejectedSpans"] == "1"
    status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert [(s["span_id"], s["kind"], s["service"]) for s in trace["spans"]] == [
        ("00000000000000aa", "client", "orders")
    ]


async def test_a_retried_delivery_is_stored_once(rig: CollectorRig) -> None:
    body = encoded(span(0x1), span(0x2, parent=0x1, start=T0_NS + 1))
    for _ in range(2):
        status, _, raw = await post_otlp(rig.payments, body)
        assert status == 200
        assert not response_of(raw).HasField("partial_success")
    status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert [s["span_id"] for s in trace["spans"]] == ["0000000000000001", "0000000000000002"]
    assert stored_spans(rig.state) == 2


async def test_a_body_that_is_not_a_request_stores_nothing(rig: CollectorRig) -> None:
    garbage = b"\x0a\xff\xff\xff\xff\x0f" + encoded(span(0x1))
    status, media, raw = await post_otlp(rig.payments, garbage)
    assert (status, media) == (400, "application/json")
    assert b'"error":"invalid_request"' in raw
    status, _, raw = await post_otlp(rig.payments, b"{not json", "application/json")
    assert status == 400
    status, _, raw = await post_otlp(rig.payments, encoded(span(0x1)), "text/plain")
    assert (status, raw.count(b"unsupported_media_type")) == (415, 1)
    status, _, raw = await post_otlp(rig.payments, b"\0" * (MAX_BODY + 1))
    assert (status, raw.count(b"too_large")) == (413, 1)
    many = ExportTraceServiceRequest()
    scoped = many.resource_spans.add().scope_spans.add()
    for index in range(MAX_SPANS + 1):
        one = scoped.spans.add(name="s", start_time_unix_nano=T0_NS, end_time_unix_nano=T0_NS)
        one.trace_id, one.span_id = TRACE.to_bytes(16, "big"), (index + 1).to_bytes(8, "big")
    status, _, raw = await post_otlp(rig.payments, many.SerializeToString())
    assert (status, raw.count(b"too_large")) == (413, 1)
    assert stored_spans(rig.state) == 0


async def test_an_invalid_span_is_refused_alone(rig: CollectorRig) -> None:
    good = span(0x1)
    request = encode_spans(
        [
            good,
            span(0x2, trace_id=0),  # all-zero trace id
            span(0x3, end=T0_NS - 1),  # ends before it starts
            span(0x4, name="n" * 257),
            span(0x5, attributes={f"k{i}": i for i in range(65)}),
            span(0x6, events=[Event(f"e{i}", {}, timestamp=T0_NS) for i in range(33)]),
            span(0x7, name="n" * 256, attributes={f"k{i}": i for i in range(64)}),
        ]
    )
    spans = request.resource_spans[0].scope_spans[0].spans
    nested = spans.add()
    nested.CopyFrom(spans[0])
    nested.span_id = (0x8).to_bytes(8, "big")
    nested.attributes.add(key="map").value.kvlist_value.values.add(key="a")
    short = spans.add()
    short.CopyFrom(spans[0])
    short.span_id = b"\x09" * 7
    status, _, raw = await post_otlp(rig.payments, request.SerializeToString())
    assert status == 200
    partial = response_of(raw).partial_success
    assert partial.rejected_spans == 7
    assert "trace_id" in partial.error_message
    status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert sorted(s["span_id"] for s in trace["spans"]) == ["0000000000000001", "0000000000000007"]
    await post_otlp(rig.payments, request.SerializeToString())  # a retry: stored once
    scraped = {m.name: m.samples[0].value for m in _detected([rig.running])}
    assert scraped["trustmesh_audit_spans_stored"] == 2
    assert scraped["trustmesh_audit_spans_rejected"] == 14


async def test_the_reporter_is_the_peer_not_what_the_span_claims(rig: CollectorRig) -> None:
    # payments claims to be orders, and sends a span with the ids of the operator's
    claimed = span(0xAB, "POST /refunds", service="orders", start=T0_NS + 1)
    status, _, _ = await post_otlp(rig.payments, encoded(claimed))
    assert status == 200
    real = span(0xAB, "GET /audit", service="cli", start=T0_NS)
    status, _, _ = await post_otlp(rig.operator, encoded(real))
    assert status == 200
    status, trace = await rig.operator.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert [(s["name"], s["service"], s["reporter"]) for s in trace["spans"]] == [
        ("GET /audit", "cli", OPERATOR),
        ("POST /refunds", "orders", PAYMENTS),
    ]


async def test_only_the_operator_reads_a_trace(rig: CollectorRig) -> None:
    await post_otlp(rig.payments, encoded(span(0x1)))
    status, answer = await rig.payments.call("GET", f"/v1/traces/{TRACE_HEX}")
    assert status == 403
    assert "spans" not in (answer or {})
    denied = [e for e in rig.sink.events if e.reason == "admin-denied"]
    assert [(e.attributes["action"], e.peer_spiffe_id) for e in denied] == [
        ("audit-trace", PAYMENTS)
    ]
    for bad in (TRACE_HEX.upper(), TRACE_HEX[:-1], TRACE_HEX + "0", "z" * 32):
        status, answer = await rig.operator.call("GET", f"/v1/traces/{bad}")
        assert (status, answer["error"]) == (400, "invalid_request"), bad
