"""OTLP/HTTP trace export requests, read and judged (no sockets, no awaits): the body of a
``POST /v1/traces`` becomes the spans the collector stores, the spans it refuses (each
counted, with the first reason), and the request it forwards.

What is decided here (OTLP/HTTP: https://opentelemetry.io/docs/specs/otlp/#otlphttp):

- the body (:func:`read_request`): ``application/x-protobuf``, a binary
  ``ExportTraceServiceRequest``; or ``application/json``, OTLP/JSON — the protobuf JSON
  mapping but for ``traceId``/``spanId``/``parentSpanId``, which are hex, not base64
  (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding); unknown JSON
  fields are ignored, as the spec asks; an id there that is not hex, or longer than its
  kind's bytes, refuses the whole request (it cannot be read as OTLP). ``Content-Encoding:
  gzip`` is read up to the
  same bound as a plain body. Anything else is refused whole: :class:`UsageError`
  (``400``) for a body that is not a request, :class:`~trustmesh.errors.UnsupportedMediaTypeError` (``415``),
  :class:`~trustmesh.errors.PayloadTooLargeError` (``413``: past :data:`MAX_SPANS` spans, or a gzip body that grows
  past the bound);
- each span (:func:`judge`), refused alone (OTLP's partial success: the others are
  stored) when its ``trace_id`` is not 16 bytes or is all zero, its ``span_id`` not 8
  bytes or all zero, its ``parent_span_id`` neither empty nor 8 bytes (8 zero bytes is
  a root: no parent); its name is past :data:`MAX_NAME` characters; it carries more
  than :data:`MAX_ATTRIBUTES` attributes or :data:`MAX_EVENTS` events (or an event more
  than :data:`MAX_ATTRIBUTES`); an attribute is not a scalar (string, bool, int, double)
  or an array of at most :data:`MAX_ARRAY` scalars; its kind or status code is not one
  OTLP defines; a time is past 2**63 - 1 ns (the column is a signed 64-bit integer); or
  it ends before it starts. Strings (attribute values, the status message) are cut to
  :data:`MAX_STRING` characters; a double that is not finite is kept as its name
  (``"NaN"``, ``"Infinity"``, ``"-Infinity"``: JSON has no such number);
- who reported it: the mTLS peer's SPIFFE ID, never what the span says of itself
  (``service.name`` is kept as ``service``, a claim); the forwarded request carries it
  as the resource attribute :data:`REPORTER_ATTRIBUTE`, in place of any the producer set.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from trustmesh._proto.otlp import (
    AnyValue,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
    KeyValue,
    ResourceSpans,
    Span,
)
from trustmesh.errors import (
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UsageError,
)

__all__ = [
    "JSON",
    "MAX_ARRAY",
    "MAX_ATTRIBUTES",
    "MAX_EVENTS",
    "MAX_NAME",
    "MAX_SPANS",
    "MAX_STRING",
    "PROTOBUF",
    "REPORTER_ATTRIBUTE",
    "Judged",
    "SpanEvent",
    "SpanRecord",
    "answer",
    "judge",
    "narrowed",
    "read_request",
]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
#: The most spans one request may carry (past it: 413, split the request).
MAX_SPANS: Final = 10_000
MAX_NAME: Final = 256
MAX_ATTRIBUTES: Final = 64
MAX_EVENTS: Final = 32
MAX_STRING: Final = 1024
MAX_ARRAY: Final = 128
#: The resource attribute that names, in a forwarded request, who reported the spans.
REPORTER_ATTRIBUTE: Final = "trustmesh.reporter"
_MAX_NS: Final = 2**63 - 1
_KINDS: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUSES: Final = ("unset", "ok", "error")
_IDS: Final = (("traceId", 16), ("spanId", 8), ("parentSpanId", 8))

Attribute = str | bool | int | float | list[str | bool | int | float]


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Attribute]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "time_ns": self.time_ns, "attributes": self.attributes}


@dataclass(frozen=True)
class SpanRecord:
    """A span as stored: ids as lowercase hex, times in ns since the epoch, ``reporter``
    the SPIFFE ID that delivered it, ``service`` the ``service.name`` it claims (None:
    none)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    service: str | None
    reporter: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str | None
    attributes: dict[str, Attribute]
    events: tuple[SpanEvent, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "service": self.service,
            "reporter": self.reporter,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "status_message": self.status_message,
            "attributes": self.attributes,
            "events": [event.to_dict() for event in self.events],
        }


@dataclass(frozen=True)
class Judged:
    """A request judged: the spans to store (in request order, each once), how many were
    refused and why the first was, and the request to forward (the accepted spans'
    messages, as they came, under their resource stamped with the reporter)."""

    spans: tuple[SpanRecord, ...]
    rejected: int
    reason: str
    forward: ExportTraceServiceRequest


def _media(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _inflate(body: bytes, limit: int) -> bytes:
    """A gzip body, read up to ``limit`` bytes (past it: :class:`~trustmesh.errors.PayloadTooLargeError`)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise UsageError("the body is not gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"a request is at most {limit} bytes, inflated")
    if not inflater.eof:
        raise UsageError("the gzip body is truncated")
    return out


def _hex_ids_to_base64(doc: Any) -> None:
    """OTLP/JSON's hex ids, rewritten (in place) as the protobuf JSON mapping's base64."""
    if not isinstance(doc, dict):
        raise UsageError("the body is not an OTLP/JSON ExportTraceServiceRequest")
    for resource in _list(doc, "resourceSpans", "resource_spans"):
        for scope in _list(resource, "scopeSpans", "scope_spans"):
            for span in _list(scope, "spans", "spans"):
                for items in (
                    [span],
                    _list(span, "links", "links") if isinstance(span, dict) else [],
                ):
                    for item in items:
                        if not isinstance(item, dict):
                            continue
                        for camel, size in _IDS:
                            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
                            for key in (camel, snake):
                                value = item.get(key)
                                if not isinstance(value, str):
                                    continue
                                try:
                                    raw = bytes.fromhex(value) if value else b""
                                except ValueError:
                                    raise UsageError(f"{key} is not hex") from None
                                if len(raw) > size:
                                    raise UsageError(f"{key} is longer than {size} bytes")
                                item[key] = base64.b64encode(raw).decode()


def _list(doc: Any, camel: str, snake: str) -> list[Any]:
    if not isinstance(doc, dict):
        return []
    value = doc.get(camel, doc.get(snake, []))
    return value if isinstance(value, list) else []


def read_request(
    body: bytes, content_type: str, content_encoding: str, *, limit: int
) -> ExportTraceServiceRequest:
    """The request ``body`` holds (module docstring), else the error that refuses it."""
    media = _media(content_type)
    if media not in (PROTOBUF, JSON):
        raise UnsupportedMediaTypeError(f"Content-Type is {PROTOBUF} or {JSON}")
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        body = _inflate(body, limit)
    elif encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError("Content-Encoding is gzip or none")
    request = ExportTraceServiceRequest()
    try:
        if media == PROTOBUF:
            request.ParseFromString(body)
        else:
            doc = json.loads(body)
            _hex_ids_to_base64(doc)
            json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, RecursionError):
        raise UsageError("the body is not an OTLP ExportTraceServiceRequest") from None
    count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
    if count > MAX_SPANS:
        raise PayloadTooLargeError(f"a request is at most {MAX_SPANS} spans")
    return request


class _Refused(Exception):
    """A span refused (its reason)."""


def _scalar(value: AnyValue) -> str | bool | int | float:
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value[:MAX_STRING])
    if which == "bool_value":
        return bool(value.bool_value)
    if which == "int_value":
        return int(value.int_value)
    if which == "double_value":
        number = float(value.double_value)
        if math.isfinite(number):
            return number
        return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
    raise _Refused(f"an attribute's value is {which or 'empty'}, not a scalar")


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Attribute]:
    if len(pairs) > MAX_ATTRIBUTES:
        raise _Refused(f"more than {MAX_ATTRIBUTES} attributes")
    found: dict[str, Attribute] = {}
    for pair in pairs:
        if not pair.key or len(pair.key) > MAX_NAME:
            raise _Refused(f"an attribute's key is empty or past {MAX_NAME} characters")
        value = pair.value
        if value.WhichOneof("value") == "array_value":
            items = value.array_value.values
            if len(items) > MAX_ARRAY:
                raise _Refused(f"an attribute's array is past {MAX_ARRAY} values")
            found[pair.key] = [_scalar(item) for item in items]
        else:
            found[pair.key] = _scalar(value)
    return found


def _id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or not any(raw):
        raise _Refused(f"{what} is not {size} bytes, or is all zero")
    return raw.hex()


def _time(ns: int) -> int:
    if ns > _MAX_NS:
        raise _Refused("a time is past 2**63 - 1 ns")
    return ns


def _record(span: Span, service: str | None, reporter: str) -> SpanRecord:
    trace_id = _id(span.trace_id, 16, "trace_id")
    span_id = _id(span.span_id, 8, "span_id")
    parent = span.parent_span_id
    if parent and len(parent) != 8:
        raise _Refused("parent_span_id is neither empty nor 8 bytes")
    if len(span.name) > MAX_NAME:
        raise _Refused(f"the name is past {MAX_NAME} characters")
    if len(span.events) > MAX_EVENTS:
        raise _Refused(f"more than {MAX_EVENTS} events")
    if not 0 <= span.kind < len(_KINDS):
        raise _Refused("the kind is not one OTLP defines")
    code = span.status.code
    if not 0 <= code < len(_STATUSES):
        raise _Refused("the status code is not one OTLP defines")
    start, end = _time(span.start_time_unix_nano), _time(span.end_time_unix_nano)
    if end < start:
        raise _Refused("the span ends before it starts")
    events = tuple(
        SpanEvent(_name(event.name), _time(event.time_unix_nano), _attributes(event.attributes))
        for event in span.events
    )
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent.hex() if any(parent) else None,
        name=span.name,
        kind=_KINDS[span.kind],
        service=service,
        reporter=reporter,
        start_ns=start,
        end_ns=end,
        status=_STATUSES[code],
        status_message=span.status.message[:MAX_STRING] or None,
        attributes=_attributes(span.attributes),
        events=events,
    )


def _name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise _Refused(f"an event's name is past {MAX_NAME} characters")
    return name


def _service(resource: ResourceSpans) -> str | None:
    for pair in resource.resource.attributes:
        if pair.key == "service.name" and pair.value.WhichOneof("value") == "string_value":
            return str(pair.value.string_value[:MAX_NAME])
    return None


def _stamped(resource: ResourceSpans, reporter: str) -> ResourceSpans:
    """``resource`` without its spans, its attributes naming ``reporter``."""
    out = ResourceSpans(schema_url=resource.schema_url)
    out.resource.CopyFrom(resource.resource)
    kept = [p for p in out.resource.attributes if p.key != REPORTER_ATTRIBUTE]
    del out.resource.attributes[:]
    out.resource.attributes.extend(kept)
    out.resource.attributes.add(key=REPORTER_ATTRIBUTE).value.string_value = reporter
    return out


def judge(request: ExportTraceServiceRequest, reporter: str) -> Judged:
    """Each span of ``request`` stored or refused (module docstring); a span twice in
    the request (same trace and span id) is kept once, its first."""
    spans: list[SpanRecord] = []
    seen: set[tuple[str, str]] = set()
    rejected, reason = 0, ""
    forward = ExportTraceServiceRequest()
    for resource in request.resource_spans:
        service = _service(resource)
        out: ResourceSpans | None = None
        for scope in resource.scope_spans:
            kept: list[Span] = []
            for span in scope.spans:
                try:
                    record = _record(span, service, reporter)
                except _Refused as why:
                    rejected += 1
                    reason = reason or str(why)
                    continue
                if (record.trace_id, record.span_id) in seen:
                    continue
                seen.add((record.trace_id, record.span_id))
                spans.append(record)
                kept.append(span)
            if kept:
                if out is None:
                    out = _stamped(resource, reporter)
                scoped = out.scope_spans.add(schema_url=scope.schema_url)
                scoped.scope.CopyFrom(scope.scope)
                scoped.spans.extend(kept)
        if out is not None:
            forward.resource_spans.append(out)
    return Judged(tuple(spans), rejected, reason, forward)


def answer(rejected: int, reason: str) -> bytes:
    """The ``ExportTraceServiceResponse`` to a request: ``partial_success`` filled only
    when spans were refused (OTLP: left unset on full success)."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = f"{rejected} spans refused; first: {reason}"
    return bytes(response.SerializeToString())


def narrowed(request: ExportTraceServiceRequest, keep: set[tuple[str, str]]) -> bytes:
    """``request`` with only the spans whose (trace id, span id), in hex, are in
    ``keep`` (the newly stored: a retried delivery is not forwarded twice), serialized;
    empty bytes when none is left."""
    out = ExportTraceServiceRequest()
    for resource in request.resource_spans:
        scopes = []
        for scope in resource.scope_spans:
            spans = [s for s in scope.spans if (s.trace_id.hex(), s.span_id.hex()) in keep]
            if spans:
                scopes.append((scope, spans))
        if not scopes:
            continue
        kept = out.resource_spans.add(schema_url=resource.schema_url)
        kept.resource.CopyFrom(resource.resource)
        for scope, spans in scopes:
            scoped = kept.scope_spans.add(schema_url=scope.schema_url)
            scoped.scope.CopyFrom(scope.scope)
            scoped.spans.extend(spans)
    return out.SerializeToString() if out.resource_spans else b""
