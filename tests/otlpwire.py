"""OTLP protobuf for tests, written out from the OpenTelemetry SDK's ``ReadableSpan``
field by field — independent of trustmesh's own encoder (OTLP/JSON) and reader. The
messages are trustmesh's copy of OTLP's (``trustmesh._proto.otlp``: the
``opentelemetry.proto`` package may be shadowed by xds-protos' older copy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from trustmesh._proto.otlp import ExportTraceServiceRequest

__all__ = ["ExportTraceServiceRequest", "encode_spans"]


def _set(target: Any, value: object) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list | tuple):
        for item in value:
            _set(target.array_value.values.add(), item)
    else:
        target.string_value = str(value)


def _attributes(into: Any, attributes: Mapping[str, object] | None) -> None:
    for key, value in (attributes or {}).items():
        pair = into.add()
        pair.key = key
        _set(pair.value, value)


def encode_spans(spans: Sequence[ReadableSpan]) -> Any:
    """One ``ExportTraceServiceRequest``: a ``ResourceSpans`` per resource, in order."""
    request = ExportTraceServiceRequest()
    by_resource: dict[Any, Any] = {}  # resources equal by their attributes: one group
    for span in spans:
        resource = span.resource
        scope = by_resource.get(resource)
        if scope is None:
            grouped = request.resource_spans.add()
            _attributes(grouped.resource.attributes, dict(resource.attributes))
            scope = by_resource[resource] = grouped.scope_spans.add()
            if span.instrumentation_scope is not None:
                scope.scope.name = span.instrumentation_scope.name
        out = scope.spans.add()
        assert span.context is not None
        out.trace_id = span.context.trace_id.to_bytes(16, "big")
        out.span_id = span.context.span_id.to_bytes(8, "big")
        if span.parent is not None:
            out.parent_span_id = span.parent.span_id.to_bytes(8, "big")
        out.name = span.name
        out.kind = span.kind.value + 1
        out.start_time_unix_nano = span.start_time or 0
        out.end_time_unix_nano = span.end_time or 0
        _attributes(out.attributes, dict(span.attributes or {}))
        for event in span.events:
            added = out.events.add()
            added.name = event.name
            added.time_unix_nano = event.timestamp or 0
            _attributes(added.attributes, dict(event.attributes or {}))
        out.status.code = span.status.status_code.value
        if span.status.description:
            out.status.message = span.status.description
    return request
