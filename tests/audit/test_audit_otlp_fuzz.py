"""Fuzz targets for the collector's OTLP reader (``audit/otlp.py``): whatever bytes a
workload sends to ``/v1/traces``, the reader refuses them with one of its errors or
yields a request whose every span is stored or refused by the rules — never another
exception, and never a stored span that breaks them."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from spanrig import encoded, span

from trustmesh.audit.otlp import (
    JSON,
    MAX_ATTRIBUTES,
    MAX_NAME,
    PROTOBUF,
    judge,
    read_request,
)
from trustmesh.errors import UsageError

LIMIT = 1 << 20
REPORTER = "spiffe://shop.test/orders"
VALID = encoded(span(1), span(2, parent=1))
_HEX = re.compile(r"[0-9a-f]+")


def _judged(body: bytes, media: str, encoding: str = "") -> None:
    try:
        request = read_request(body, media, encoding, limit=LIMIT)
    except UsageError:  # a 400, 413 or 415: refused whole
        return
    judged = judge(request, REPORTER)
    for stored in judged.spans:
        assert len(stored.trace_id) == 32 and _HEX.fullmatch(stored.trace_id)  # noqa: PT018
        assert stored.trace_id != "0" * 32
        assert len(stored.span_id) == 16 and stored.span_id != "0" * 16  # noqa: PT018
        assert stored.parent_span_id is None or len(stored.parent_span_id) == 16
        assert len(stored.name) <= MAX_NAME
        assert len(stored.attributes) <= MAX_ATTRIBUTES
        assert stored.end_ns >= stored.start_ns
        assert stored.reporter == REPORTER
        json.dumps(stored.to_dict(), allow_nan=False)  # storable as JSON, as it is kept


@settings(max_examples=400)
@given(st.binary(max_size=2048))
def test_any_bytes_as_protobuf(body: bytes) -> None:
    _judged(body, PROTOBUF)


@settings(max_examples=400)
@given(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8))
def test_a_valid_request_with_bytes_overwritten(at: int, noise: bytes) -> None:
    _judged(VALID[:at] + noise + VALID[at + len(noise) :], PROTOBUF)


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "name", "attributes", "key", "value", "stringValue", "startTimeUnixNano"]), c, max_size=4), max_leaves=30))  # fmt: skip
def test_any_json_shape(doc: object) -> None:
    _judged(json.dumps(doc).encode(), JSON)


@given(st.binary(max_size=512))
def test_any_bytes_as_gzip(body: bytes) -> None:
    _judged(body, PROTOBUF, "gzip")
