"""Spans (trustmesh.sdk.spans): which spans are kept, what they say, and their queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from otlpwire import encode_spans

from trustmesh import events
from trustmesh._proto.otlp import ExportTraceServiceRequest
from trustmesh.reasons import Reason
from trustmesh.sdk import spans, trace


class Kept(SpanProcessor):
    """The spans a tracer keeps (what it would hand to the collector's exporter)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def _tracer(ratio: float = 0.0, draws: Sequence[float] = ()) -> tuple[spans.Tracer, Kept]:
    kept = Kept()
    values = iter(draws)
    clock = iter(range(1_000, 10**9, 1_000))
    tracer = spans.Tracer(
        "orders",
        kept,
        sample_ratio=ratio,
        spiffe_id="spiffe://shop.test/orders",
        clock_ns=lambda: next(clock),
        draw=lambda: next(values),
    )
    return tracer, kept


@pytest.fixture
def installed() -> Iterator[tuple[spans.Tracer, Kept]]:
    tracer, kept = _tracer()
    previous = spans.install(tracer)
    try:
        yield tracer, kept
    finally:
        spans.install(previous)


def test_a_new_trace_is_sampled_at_the_ratio() -> None:
    tracer, _ = _tracer(0.25, [0.1, 0.3, 0.2499, 0.25])
    assert [tracer.new_trace().sampled for _ in range(4)] == [True, False, True, False]
    assert _tracer(1.0)[0].new_trace().flags == "01"
    assert _tracer(0.0)[0].new_trace().flags == "00"  # no draw made either


@pytest.mark.parametrize(
    ("flags", "decision", "status", "error", "kept"),
    [
        ("01", "allow", 200, None, True),  # sampled: every hop keeps it
        ("03", "allow", 200, None, True),  # sampled, and another flag (§3.2.2.5)
        ("00", "allow", 200, None, False),
        ("00", "deny", 403, None, True),  # a refusal is always kept
        ("00", "error", 0, None, True),
        ("00", "allow", 404, None, True),  # a failed request too
        ("00", "allow", 502, None, True),
        ("00", None, 0, "TimeoutError", True),
    ],
)
def test_which_spans_are_kept(
    flags: str, decision: str | None, status: int, error: str | None, kept: bool
) -> None:
    tracer, out = _tracer()
    context = trace.TraceParent("0" * 31 + "1", "a" * 16, flags)
    span = tracer.start("GET /orders", SpanKind.SERVER, context, "b" * 16)
    if decision is not None:
        span.decided(decision, "policy-deny" if decision == "deny" else "policy-allow", 5)
    assert tracer.end(span, status=status, error=error) is kept
    assert len(out.spans) == int(kept)


def test_a_kept_span_says_what_happened() -> None:
    tracer, out = _tracer()
    context = trace.TraceParent("1" * 32, "2" * 16, "00")
    span = tracer.start("POST /charges", SpanKind.SERVER, context, "3" * 16)
    span.decided("allow", "policy-allow", 1_500)
    span.decided("deny", "token-expired", 1_600)
    span.decided("allow", "policy-allow", 1_700)
    tracer.end(span, status=401)
    (done,) = out.spans
    assert done.context is not None
    assert done.parent is not None
    assert f"{done.context.trace_id:032x}" == "1" * 32
    assert f"{done.context.span_id:016x}" == "2" * 16
    assert f"{done.parent.span_id:016x}" == "3" * 16
    assert done.parent.is_remote
    assert done.context.trace_flags.sampled  # kept: the exporters take it
    attributes = dict(done.attributes or {})
    # the first refusal names the span's outcome, not the last decision
    assert attributes["trustmesh.decision"] == "deny"
    assert attributes["trustmesh.reason"] == "token-expired"
    assert attributes["http.response.status_code"] == 401
    assert [(e.name, dict(e.attributes or {})["trustmesh.reason"]) for e in done.events] == [
        ("decision", "policy-allow"),
        ("decision", "token-expired"),
        ("decision", "policy-allow"),
    ]
    assert done.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not ours
    assert dict(done.resource.attributes)["service.name"] == "orders"
    assert done.start_time is not None
    assert done.end_time is not None
    assert done.start_time < done.end_time


def test_a_server_error_marks_the_span_failed() -> None:
    tracer, out = _tracer()
    span = tracer.start("GET /x", SpanKind.SERVER, trace.TraceParent("1" * 32, "2" * 16), None)
    tracer.end(span, status=503)
    assert out.spans[0].status.status_code is StatusCode.ERROR
    assert out.spans[0].parent is None


async def _app(scope: Any, receive: Any, send: Any) -> None:
    recorder = events.Recorder(_SINK, component="orders")
    recorder.record(Reason.POLICY_DENY, "call denied by policy", trace_id=_seen(scope))
    await send({"type": "http.response.start", "status": 403, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


_RECORDED = events.MemorySink()
_SINK = spans.NotingSink(_RECORDED)


def _seen(_scope: dict[str, Any]) -> str | None:
    current = trace.current()
    return current.trace_id if current else None


def _scope(traceparent: str | None = None) -> dict[str, Any]:
    headers = [(b"traceparent", traceparent.encode())] if traceparent else []
    return {
        "type": "http",
        "method": "GET",
        "path": "/orders/7",
        "raw_path": b"/orders/7",
        "headers": headers,
    }


async def _serve(app: spans.TracedApp, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_server_span_follows_the_callers_trace_and_notes_the_decision(
    installed: tuple[spans.Tracer, Kept],
) -> None:
    _, out = installed
    incoming = "00-" + "4" * 32 + "-" + "5" * 16 + "-00"
    asyncio.run(_serve(spans.TracedApp(_app), _scope(incoming)))
    (done,) = out.spans  # unsampled, but refused: kept
    assert done.context is not None
    assert done.parent is not None
    assert f"{done.context.trace_id:032x}" == "4" * 32
    assert f"{done.parent.span_id:016x}" == "5" * 16
    assert f"{done.context.span_id:016x}" != "5" * 16
    assert done.kind is SpanKind.SERVER
    assert done.name == "GET /orders/7"
    attributes = dict(done.attributes or {})
    assert attributes["trustmesh.decision"] == "deny"
    assert attributes["trustmesh.reason"] == "policy-deny"
    assert attributes["url.path"] == "/orders/7"
    # the event recorded during the request carries the same trace
    assert _RECORDED.events[-1].to_ocsf()["metadata"]["correlation_uid"] == "4" * 32


def test_a_server_span_that_does_not_follow_starts_its_own_trace(
    installed: tuple[spans.Tracer, Kept],
) -> None:
    _, out = installed
    incoming = "00-" + "4" * 32 + "-" + "5" * 16 + "-01"
    asyncio.run(_serve(spans.TracedApp(_app, follow=False), _scope(incoming)))
    (done,) = out.spans
    assert done.context is not None
    assert f"{done.context.trace_id:032x}" != "4" * 32
    assert done.parent is None


def test_without_a_tracer_requests_still_carry_their_trace() -> None:
    previous = spans.install(None)
    try:
        asyncio.run(
            _serve(spans.TracedApp(_app), _scope("00-" + "6" * 32 + "-" + "7" * 16 + "-01"))
        )
    finally:
        spans.install(previous)
    assert _RECORDED.events[-1].to_ocsf()["metadata"]["correlation_uid"] == "6" * 32


class Exporter(SpanExporter):
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.done = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(spans))
        if sum(self.batches) >= 5:
            self.done.set()
        return SpanExportResult.SUCCESS


def _kept_span(tracer: spans.Tracer) -> ReadableSpan:
    span = tracer.start("x", SpanKind.SERVER, trace.TraceParent("1" * 32, "2" * 16), None)
    return tracer._readable(span, None, 200, None)


def test_the_queue_exports_in_batches_and_drops_past_its_bound() -> None:
    tracer, _ = _tracer()
    gate = threading.Event()
    exporter = Exporter(gate)
    queue = spans.SpanQueue(exporter, max_queue=3, batch=2, every=0.01)
    try:
        for _ in range(8):
            queue.on_end(_kept_span(tracer))
        # the thread holds at most one batch at the gate; the queue at most 3
        assert queue.dropped >= 3
        gate.set()
        assert queue.force_flush(5000)
    finally:
        queue.shutdown()
    assert sum(exporter.batches) + queue.dropped == 8
    assert max(exporter.batches) <= 2


def test_the_queue_exports_a_lone_span_without_waiting_for_a_batch() -> None:
    tracer, _ = _tracer()
    exporter = Exporter()
    queue = spans.SpanQueue(exporter, batch=512, every=0.01)
    try:
        for _ in range(5):
            queue.on_end(_kept_span(tracer))
        assert exporter.done.wait(5)
    finally:
        queue.shutdown()
    assert queue.dropped == 0


def test_kept_spans_encode_as_otlp() -> None:
    tracer, out = _tracer()
    span = tracer.start("GET /a", SpanKind.CLIENT, trace.TraceParent("8" * 32, "9" * 16), "7" * 16)
    span.decided("deny", "policy-deny", 10)
    tracer.end(span, status=403)
    decoded = ExportTraceServiceRequest.FromString(encode_spans(out.spans).SerializeToString())
    (sent,) = decoded.resource_spans[0].scope_spans[0].spans
    assert sent.trace_id.hex() == "8" * 32
    assert sent.parent_span_id.hex() == "7" * 16
    assert sent.events[0].name == "decision"


def test_an_event_recorded_while_a_request_is_served_carries_its_trace() -> None:
    """Whoever records it (a provider's, a secrets service's recorder names no trace)."""
    sink = events.MemorySink()
    recorder = events.Recorder(sink, component="auth")
    recorder.record(Reason.TOKEN_ISSUED, "issued")
    token = trace.use(trace.TraceParent("c" * 32, "d" * 16))
    try:
        recorder.record(Reason.TOKEN_ISSUED, "issued")
        recorder.record(Reason.TOKEN_ISSUED, "issued", trace_id="e" * 32)  # named: kept
    finally:
        trace.reset(token)
    found = [e.to_ocsf()["metadata"].get("correlation_uid") for e in sink.events]
    assert found == [None, "c" * 32, "e" * 32]


def test_without_a_draw_the_trace_ids_random_bits_decide() -> None:
    """As OpenTelemetry's TraceIdRatioBased: the id's random part against the ratio."""
    tracer = spans.Tracer("gateway", Kept(), sample_ratio=0.25)
    made = [tracer.new_trace() for _ in range(4000)]
    share = sum(t.sampled for t in made) / len(made)
    assert 0.2 < share < 0.3  # 7 standard deviations either side
    for t in made:  # the decision follows from the id itself
        assert t.sampled == (int(t.trace_id[18:], 16) < 0.25 * 2**56)


def test_the_collectors_encoding_reads_back_as_the_same_spans() -> None:
    """What the exporter sends (OTLP/JSON) is what the collector's OTLP reader takes: the
    same ids, parent, kind, times, attributes and decision events as the SDK encoder's."""
    from trustmesh.audit.otlp import JSON, PROTOBUF, judge, read_request

    tracer, out = _tracer()
    span = tracer.start("GET /a", SpanKind.CLIENT, trace.TraceParent("8" * 32, "9" * 16), "7" * 16)
    span.attributes["http.request.method"] = "GET"
    span.decided("deny", "policy-deny", 10)
    tracer.end(span, status=503, error="TimeoutError")
    ours = read_request(spans.otlp_json(out.spans), JSON, "", limit=1 << 20)
    sdk = read_request(encode_spans(out.spans).SerializeToString(), PROTOBUF, "", limit=1 << 20)
    (mine,), (theirs,) = judge(ours, "r").spans, judge(sdk, "r").spans
    assert mine == theirs
    assert (mine.kind, mine.status, mine.status_message) == ("client", "error", "TimeoutError")
    assert mine.attributes["http.response.status_code"] == 503
    assert mine.service == "orders"


class _Collector:
    """The collector's answers, in order (a CollectorClient's ``post``)."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.posted = 0

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        from trustmesh.sdk.collector import CollectorUnavailableError

        assert (path, content_type) == ("/v1/traces", "application/json")
        self.posted += 1
        answer = self.answers.pop(0) if self.answers else 200
        if answer == 0:
            raise CollectorUnavailableError("no answer")
        return answer, b"{}"

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("answers", "exported", "posts", "slept"),
    [
        ((0, 503, 200), True, 3, [0.25, 0.5]),  # no answer, busy, then taken
        ((400,), False, 1, []),  # refused: the same again gets the same
        ((0, 0, 0, 0, 0, 0), False, 5, [0.25, 0.5, 1.0, 2.0]),  # gone: dropped, counted
    ],
)
def test_the_exporter_tries_again_while_the_collector_cannot_take_spans(
    answers: tuple[int, ...], exported: bool, posts: int, slept: list[float]
) -> None:
    tracer, _ = _tracer()
    naps: list[float] = []
    collector = _Collector(*answers)
    exporter = spans.CollectorSpanExporter(collector, sleep=naps.append)  # type: ignore[arg-type]
    result = exporter.export([_kept_span(tracer)])
    assert (result is SpanExportResult.SUCCESS) is exported
    assert (collector.posted, naps) == (posts, slept)
    assert (exporter.exported, exporter.dropped) == ((1, 0) if exported else (0, 1))
