"""Spans as the producers send them (OpenTelemetry SDK ``ReadableSpan`` objects, encoded
by the OTLP exporter's own ``encode_spans``), and an OTLP/HTTP POST over a workload's
real mTLS connection to the collector."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from collectorrig import Caller
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from otlpwire import encode_spans

from trustmesh._proto.otlp import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
TRACE_HEX = f"{TRACE:032x}"
#: 2026-01-05 12:00:00 UTC in ns
T0_NS = 1_767_614_400_000_000_000


def context(span_id: int, trace_id: int = TRACE) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))


def span(
    span_id: int,
    name: str = "GET /charges/{id}",
    *,
    trace_id: int = TRACE,
    parent: int | None = None,
    service: str = "payments",
    start: int = T0_NS,
    end: int | None = None,
    kind: SpanKind = SpanKind.SERVER,
    attributes: dict[str, Any] | None = None,
    events: Sequence[Event] = (),
    status: Status | None = None,
    resource: dict[str, str] | None = None,
) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=context(span_id, trace_id),
        parent=None if parent is None else context(parent, trace_id),
        resource=Resource({"service.name": service, **(resource or {})}),
        attributes=attributes or {},
        events=events,
        kind=kind,
        status=status or Status(StatusCode.UNSET),
        start_time=start,
        end_time=start + 1_000_000 if end is None else end,
    )


def encoded(*spans: ReadableSpan) -> bytes:
    return encode_spans(list(spans)).SerializeToString()


def _data(body: bytes) -> bytes | io.BytesIO:
    return io.BytesIO(body) if len(body) > 1024 * 1024 else body  # aiohttp warns of large bytes


async def post_otlp(
    caller: Caller,
    body: bytes,
    content_type: str = "application/x-protobuf",
    **headers: str,
) -> tuple[int, str, bytes]:
    """POST /v1/traces: the status, the answer's content type and its body."""
    connector = aiohttp.TCPConnector(ssl=caller.workload.ssl_context())
    sent = {"Content-Type": content_type, **headers}
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(caller.url + "/v1/traces", data=_data(body), headers=sent) as response,
    ):
        return response.status, response.content_type, await response.read()


def response_of(raw: bytes) -> ExportTraceServiceResponse:
    return ExportTraceServiceResponse.FromString(raw)


def stored_spans(state: Path) -> int:
    database = sqlite3.connect(state / "audit" / "audit.db")
    try:
        (count,) = database.execute("SELECT count(*) FROM audit_spans").fetchone()
    finally:
        database.close()
    return int(count)


def request_of(raw: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(raw)
