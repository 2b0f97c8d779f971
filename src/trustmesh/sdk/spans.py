"""Spans: what each hop of one request did, and when (OpenTelemetry tracing).

A span opens where a request enters a component — the gateway, a service's middleware,
the provider and the secrets service (:func:`traced`, :class:`TracedApp`) — and where a
service calls another (:class:`~trustmesh.sdk.client.ServiceClient`: a client span,
whose child is the callee's server span, and the on-behalf-of token exchange made for
it). Its context travels in W3C ``traceparent`` (:mod:`trustmesh.sdk.trace`). Each
decision recorded while a span is current (any event written through a
:class:`NotingSink`) is noted on it: a span event ``decision`` with
``trustmesh.decision`` and ``trustmesh.reason``, and the span's own
``trustmesh.decision``/``trustmesh.reason`` — the first refusal if there was one, else
the last decision.

Sampling, per hop, decided at the end of the span (so a refusal deep in the call graph
is never lost to a coin toss at the edge):

- where a request starts a trace (the gateway; a service called with no
  ``traceparent``), the new trace id's random bits against ``sample_ratio`` (as
  OpenTelemetry's ``TraceIdRatioBased``) set the ``sampled`` flag
  (``traceparent`` flags ``01``), which every later hop follows; a call a service makes
  outside any request (a poll, a refresh) starts an unsampled trace;
- a span is **kept** when its trace is sampled, or when it saw a ``deny`` or ``error``
  decision, an answer of 400 or more, or an exception: every refused or failed request
  is traced whatever the ratio.

A span that is not kept costs a clock read, a context variable and a few attribute
writes. A kept one is built as the OpenTelemetry SDK's ``ReadableSpan`` and handed to the
tracer's ``SpanProcessor`` — in a component, a :class:`SpanQueue`: bounded, drained in
batches by one thread through :class:`CollectorSpanExporter`, which POSTs OTLP/HTTP
(an OTLP/JSON ``ExportTraceServiceRequest``) to the audit collector's ``/v1/traces``
over mTLS. Spans are telemetry, not evidence: a full queue or an unreachable collector drops
them, counted (:attr:`SpanQueue.dropped`, :attr:`CollectorSpanExporter.dropped`), never
logged one by one (a flood of refusals must not flood the log); the decisions
themselves are in the audit log, which loses nothing.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError
from trustmesh.sdk import trace
from trustmesh.sdk.collector import CollectorClient
from trustmesh.sdk.delivery import AUDIT_URL_ENV, NO_COLLECTOR, collector_endpoint
from trustmesh.sdk.x509source import SVIDSource

__all__ = [
    "TRACES_PATH",
    "CollectorSpanExporter",
    "NotingSink",
    "Span",
    "SpanKind",
    "SpanQueue",
    "TracedApp",
    "Tracer",
    "current_span",
    "install",
    "note",
    "otlp_json",
    "traced",
    "tracer",
    "tracer_from_env",
]

log = logging.getLogger("trustmesh.sdk.spans")

TRACES_PATH: Final = "/v1/traces"
_SCOPE: Final = InstrumentationScope("trustmesh")
_KEPT_DECISIONS: Final = frozenset({"deny", "error"})
_OK: Final = Status(StatusCode.UNSET)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Span:
    """One hop, open: its context (``context``: this span's own ids and the trace's
    flags), its parent's span id, and what it learns until it ends."""

    __slots__ = ("attributes", "context", "decisions", "kind", "name", "parent_id", "start_ns")

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        context: trace.TraceParent,
        parent_id: str | None,
        start_ns: int,
    ) -> None:
        self.name = name
        self.kind = kind
        self.context = context
        self.parent_id = parent_id
        self.start_ns = start_ns
        self.attributes: dict[str, str | int | bool | float] = {}
        self.decisions: list[tuple[str, str, int]] = []

    def decided(self, decision: str, reason: str, at_ns: int) -> None:
        self.decisions.append((decision, reason, at_ns))

    def outcome(self) -> tuple[str, str] | None:
        """The span's decision and reason: the first refusal, else the last decision."""
        for decision, reason, _ in self.decisions:
            if decision in _KEPT_DECISIONS:
                return decision, reason
        if self.decisions:
            decision, reason, _ = self.decisions[-1]
            return decision, reason
        return None


class Tracer:
    """A component's spans: the sampling draw where a trace starts, and, at each span's
    end, whether it is kept — a kept span goes to ``processor`` as a ``ReadableSpan``.
    ``clock_ns``: wall time in nanoseconds; ``draw``: uniform in [0, 1), where a test
    sets the sampling draws (else a new trace's random id decides)."""

    def __init__(
        self,
        component: str,
        processor: SpanProcessor,
        *,
        sample_ratio: float,
        spiffe_id: str | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        draw: Callable[[], float] | None = None,
    ) -> None:
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError("sample_ratio must be from 0 to 1")
        self.component = component
        self.processor = processor
        self.sample_ratio = sample_ratio
        self.clock_ns = clock_ns
        self._draw = draw
        self._bound = round(sample_ratio * (1 << 56))  # new_trace: the id's last 56 bits
        attributes: dict[str, str] = {"service.name": component}
        if spiffe_id is not None:
            attributes["trustmesh.spiffe_id"] = spiffe_id
        self.resource = Resource(attributes)
        self.kept = 0

    def new_trace(self) -> trace.TraceParent:
        """A new trace's first context: sampled at ``sample_ratio``, by its id's last 56
        bits (random) against the ratio, as OpenTelemetry's ``TraceIdRatioBased`` does
        — no draw of its own — unless a ``draw`` was given."""
        new = trace.TraceParent.new()
        ratio = self.sample_ratio
        if ratio >= 1.0:
            return new
        if self._draw is not None:
            sampled = ratio > 0.0 and self._draw() < ratio
        else:
            sampled = int(new.trace_id[18:], 16) < self._bound
        return new if sampled else trace.TraceParent(new.trace_id, new.span_id, "00")

    def start(
        self,
        name: str,
        kind: SpanKind,
        context: trace.TraceParent,
        parent_id: str | None,
    ) -> Span:
        return Span(name, kind, context, parent_id, self.clock_ns())

    def end(self, span: Span, *, status: int = 0, error: str | None = None) -> bool:
        """End ``span`` (``status``: the HTTP answer, 0 for none; ``error``: what failed,
        when something raised); whether it was kept."""
        outcome = span.outcome()
        refused = outcome is not None and outcome[0] in _KEPT_DECISIONS
        if not (span.context.sampled or refused or status >= 400 or error is not None):
            return False
        self.processor.on_end(self._readable(span, outcome, status, error))
        self.kept += 1
        return True

    def _readable(
        self, span: Span, outcome: tuple[str, str] | None, status: int, error: str | None
    ) -> ReadableSpan:
        attributes = span.attributes
        if status:
            attributes["http.response.status_code"] = status
        if error is not None or status >= 500:
            state = Status(StatusCode.ERROR, error or f"HTTP {status}")
        else:
            state = _OK
        ids = span.context
        parent = (
            SpanContext(int(ids.trace_id, 16), int(span.parent_id, 16), True, TraceFlags(1))
            if span.parent_id is not None
            else None
        )
        if outcome is not None:
            attributes["trustmesh.decision"], attributes["trustmesh.reason"] = map(str, outcome)
        return ReadableSpan(
            span.name,
            SpanContext(int(ids.trace_id, 16), int(ids.span_id, 16), False, TraceFlags(1)),
            parent,
            resource=self.resource,
            attributes=attributes,
            events=[
                SpanEvent(
                    "decision",
                    {"trustmesh.decision": str(decision), "trustmesh.reason": str(reason)},
                    at_ns,
                )
                for decision, reason, at_ns in span.decisions
            ],
            kind=span.kind,
            status=state,
            start_time=span.start_ns,
            end_time=self.clock_ns(),
            instrumentation_scope=_SCOPE,
        )

    def shutdown(self) -> None:
        """Export what is queued (within the processor's timeout) and stop."""
        self.processor.shutdown()


_tracer: Tracer | None = None
_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar("trustmesh_span", default=None)


def install(tracer: Tracer | None) -> Tracer | None:
    """Make ``tracer`` this process's (None: no spans); the one it replaces."""
    global _tracer
    previous, _tracer = _tracer, tracer
    return previous


def tracer() -> Tracer | None:
    """This process's tracer, if spans are recorded."""
    return _tracer


def current_span() -> Span | None:
    return _span.get()


def use_span(span: Span | None) -> contextvars.Token[Span | None]:
    return _span.set(span)


def reset_span(token: contextvars.Token[Span | None]) -> None:
    _span.reset(token)


def note(decision: str, reason: str) -> None:
    """A decision made while the current span is open: noted on it."""
    span = _span.get()
    if span is not None:
        span.decided(decision, reason, time.time_ns())


class NotingSink:
    """An event sink that notes each event's decision on the current span, then hands
    the event on: every recorded decision reaches its span without the recorder
    knowing spans exist."""

    def __init__(self, inner: events.EventSink) -> None:
        self.inner = inner

    def emit(self, event: events.Event) -> None:
        span = _span.get()
        if span is not None:  # str enums: made plain text only for a span that is kept
            span.decisions.append((event.decision, event.reason, time.time_ns()))
        self.inner.emit(event)


def _incoming(scope: Scope) -> trace.TraceParent | None:
    raw = next((v for k, v in scope.get("headers", ()) if k == b"traceparent"), None)
    return trace.parse(raw.decode("latin-1")) if raw else None


async def traced(
    scope: Scope,
    receive: Receive,
    send: Send,
    handle: ASGIApp,
    *,
    follow: bool = True,
) -> None:
    """Serve one HTTP request through ``handle`` as this component's server span: a child
    of the caller's ``traceparent`` (``follow``; False: where anyone may connect, so no
    one can attach requests to a trace of their choosing), else a new trace. The trace
    is current while ``handle`` runs, and so is the span, when this process records
    spans (named after the method and path until ``handle`` names it better: the
    route)."""
    parent = _incoming(scope) if follow else None
    active = _tracer
    own = parent.child() if parent else active.new_trace() if active else trace.TraceParent.new()
    token = trace.use(own)
    if active is None:
        try:
            await handle(scope, receive, send)
        finally:
            trace.reset(token)
        return
    method = scope.get("method", "")
    path = (scope.get("raw_path") or scope.get("path", "").encode()).decode("latin-1")
    span = active.start(
        f"{method} {path[:128]}", SpanKind.SERVER, own, parent.span_id if parent else None
    )
    span.attributes["http.request.method"] = method
    span.attributes["url.path"] = path[:512]
    span_token = _span.set(span)
    status = 0

    async def watched(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    error: str | None = None
    try:
        await handle(scope, receive, watched)
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        _span.reset(span_token)
        trace.reset(token)
        active.end(span, status=status, error=error)


class TracedApp:
    """An ASGI app served as server spans (see :func:`traced`; ``follow``: whether the
    caller's ``traceparent`` is followed)."""

    def __init__(self, app: ASGIApp, *, follow: bool = True) -> None:
        self.app = app
        self.follow = follow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await traced(scope, receive, send, self.app, follow=self.follow)


def _value(value: object) -> dict[str, Any]:
    """An attribute's value in OTLP/JSON (``AnyValue``; 64-bit integers as strings)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, tuple | list):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attributes: Mapping[str, object] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in (attributes or {}).items()]


def _otlp_span(span: ReadableSpan) -> dict[str, Any]:
    ids = span.context
    assert ids is not None  # noqa: S101 - every span built here has its context
    out: dict[str, Any] = {
        "traceId": f"{ids.trace_id:032x}",
        "spanId": f"{ids.span_id:016x}",
        "name": span.name,
        "kind": span.kind.value + 1,  # OTLP counts from SPAN_KIND_UNSPECIFIED = 0
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": _attributes(span.attributes),
        "status": {"code": span.status.status_code.value},
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.status.description:
        out["status"]["message"] = span.status.description
    if span.events:
        out["events"] = [
            {
                "name": e.name,
                "timeUnixNano": str(e.timestamp),
                "attributes": _attributes(e.attributes),
            }
            for e in span.events
        ]
    return out


def otlp_json(spans: Sequence[ReadableSpan]) -> bytes:
    """``spans`` as one OTLP/JSON ``ExportTraceServiceRequest`` (ids in hex, as OTLP/JSON
    asks: https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding), grouped by
    resource. A third of the official protobuf encoder's cost a span, in the process
    that serves the requests."""
    by_resource: dict[int, tuple[Resource, list[dict[str, Any]]]] = {}
    for span in spans:
        resource = span.resource
        by_resource.setdefault(id(resource), (resource, []))[1].append(_otlp_span(span))
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": _attributes(resource.attributes)},
                    "scopeSpans": [{"scope": {"name": _SCOPE.name}, "spans": encoded}],
                }
                for resource, encoded in by_resource.values()
            ]
        }
    )


class CollectorSpanExporter(SpanExporter):
    """Exports spans to the audit collector: OTLP/HTTP, one OTLP/JSON
    ``ExportTraceServiceRequest`` per batch (:func:`otlp_json`), ``POST /v1/traces`` over
    mTLS (the collector's SPIFFE ID checked). A batch the collector did not answer, or
    answered ``429``/``5xx``, is sent again after ``0.25 × 2^n`` seconds, ``attempts``
    times in all (new spans wait in the queue meanwhile); then, or at once for another
    answer, it is dropped and counted (:attr:`dropped`; a warning at most every minute).
    Called from the processor's one thread."""

    def __init__(
        self,
        client: CollectorClient,
        *,
        attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.attempts = attempts
        self._sleep = sleep
        self.dropped = 0
        self.exported = 0
        self._closed = False
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = otlp_json(spans)
        why = "shut down"
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(0.25 * 2 ** (attempt - 1))
            with self._lock:
                if self._closed:  # shut down (a drain that outlived its wait): no connection
                    break
                try:
                    status, answer = self.client.post(TRACES_PATH, body, "application/json")
                except TrustmeshError as exc:
                    why = exc.detail
                    continue
            if status == 200:
                self.exported += len(spans)
                return SpanExportResult.SUCCESS
            why = f"the collector answered {status} {answer[:200]!r}"
            if status != 429 and status < 500:
                break  # it refuses these spans: the same again gets the same
        self.dropped += len(spans)
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("spans: %d dropped so far; the last: %s", self.dropped, why)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self.client.close()


class SpanQueue(SpanProcessor):
    """Ended spans, held for ``exporter``: at most ``max_queue`` (past it, a new span is
    dropped and counted), exported by one thread in batches of up to ``batch``, at most
    ``every`` seconds after the first span of a batch arrives (at once when a batch is
    full). :meth:`shutdown` exports what is held, within ``timeout`` seconds."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue: int = 2048,
        batch: int = 512,
        every: float = 0.2,
        timeout: float = 5.0,
    ) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.batch = batch
        self.every = every
        self.timeout = timeout
        self.dropped = 0
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._exporting = False
        self._thread = threading.Thread(target=self._run, name="trustmesh-spans", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == 1 or len(queue) >= self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self.batch and not self._stopping:
                self._wake.wait(self.every)  # a batch's worth, or its first span's wait
                self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            self._exporting = True
            taken = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
            try:
                self.exporter.export(taken)
            except Exception:  # an exporter's bug: these spans are lost, the thread is not
                log.exception("spans: the exporter failed")
            finally:
                self._exporting = False

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every span held now is exported (or the timeout): whether it was."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._wake.set()
        while (self._queue or self._exporting) and time.monotonic() < deadline:
            time.sleep(0.005)
        return not (self._queue or self._exporting)

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(self.timeout)
        self.exporter.shutdown()


def tracer_from_env(
    source: SVIDSource, config: TrustmeshConfig, state: Path, component: str
) -> Tracer | None:
    """``component``'s tracer when ``trustmesh up`` runs an audit collector
    (``TRUSTMESH_AUDIT_URL``; not for the collector itself) and tracing is on
    (``audit.tracing``: whether, the ratio and the queue's bound), exporting to it in
    the background; None otherwise."""
    url = os.environ.get(AUDIT_URL_ENV)
    if url is None or url.strip() == NO_COLLECTOR or component == "audit" or config.audit is None:
        return None
    settings = config.audit.tracing
    if not settings.enabled:
        return None
    client = CollectorClient(
        url.strip(),
        source,
        config.component_spiffe_id("audit"),
        locate=lambda: collector_endpoint(state),
    )
    processor = SpanQueue(CollectorSpanExporter(client), max_queue=settings.max_queue)
    return Tracer(
        component,
        processor,
        sample_ratio=settings.sample_ratio,
        spiffe_id=source.context.spiffe_id,
    )
