"""The collector's trace endpoints (on its mTLS listener, beside ``/v1/events``), and the
pruning of old spans.

- ``POST /v1/traces`` — OTLP/HTTP (https://opentelemetry.io/docs/specs/otlp/#otlphttp):
  any workload of the trust domain (a suspended one too) delivers its spans, each
  stored with the peer's SPIFFE ID as its reporter (:mod:`trustmesh.audit.spans`).
  ``200`` with an ``ExportTraceServiceResponse`` (protobuf, or OTLP/JSON to a JSON
  request): ``partial_success`` counts the spans refused and says why the first was
  (:mod:`trustmesh.audit.otlp`), the others are stored. A request refused whole stores
  nothing: ``400`` ``{"error": "invalid_request", "message"}`` (not a request), ``413``
  ``too_large`` (past the collector's body bound or :data:`~trustmesh.audit.otlp.MAX_SPANS`),
  ``415`` ``unsupported_media_type``; ``503`` ``unavailable`` when the store cannot take
  them (OTLP's retryable status: an exporter may try again; trustmesh's drop the batch,
  counted — spans are telemetry). The newly stored spans go to
  the OTLP forwarder, if declared, without waiting for it.
- ``GET /v1/traces/{trace_id}`` — the operator's (the ``audit-trace`` admin action): the
  trace's spans by start (at most :data:`~trustmesh.audit.spans.MAX_TRACE_SPANS`) and
  the audit log's records with that trace id (as ``GET /v1/events?trace_id=`` returns
  them, at most :data:`~trustmesh.audit.search.MAX_LIMIT`); ``"truncated": true`` when
  either was cut. An unknown trace is ``200`` with empty lists (a caller may poll).
- :class:`SpanRetention` — spans past ``audit.tracing.retention``, removed on a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trustmesh import events
from trustmesh._proto.otlp import ExportTraceServiceResponse
from trustmesh.audit.otlp import (
    JSON,
    PROTOBUF,
    Judged,
    answer,
    judge,
    narrowed,
    read_request,
)
from trustmesh.audit.otlp_forward import OtlpForwarder
from trustmesh.audit.search import MAX_LIMIT, Query
from trustmesh.audit.service import AuditService
from trustmesh.audit.spans import SpanStore, trace_id_of
from trustmesh.errors import PayloadTooLargeError, TrustmeshError, UnavailableError
from trustmesh.platform.admin import Actor, failure_response, peer_spiffe_id, record_read

__all__ = ["SpanRetention", "SpanStats", "Traces"]

log = logging.getLogger("trustmesh.audit")
_NO_STORE: Final = {"Cache-Control": "no-store"}


@dataclass
class SpanStats:
    """Spans since the collector started (plain integers, read by the metrics)."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


async def _read(request: Request, limit: int) -> bytes:
    """The body, or :class:`~trustmesh.errors.PayloadTooLargeError` past ``limit`` bytes (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"a request is at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(rejected: int, reason: str, media: str) -> Response:
    body = answer(rejected, reason)
    if media != JSON:
        return Response(body, media_type=PROTOBUF)
    response = ExportTraceServiceResponse.FromString(body)
    return JSONResponse(json_format.MessageToDict(response))


def _judged(body: bytes, content_type: str, encoding: str, limit: int, reporter: str) -> Judged:
    return judge(read_request(body, content_type, encoding, limit=limit), reporter)


class Traces:
    """The endpoints over ``store`` (module docstring). ``forwarder``: where newly
    stored spans also go (None: nowhere)."""

    def __init__(
        self,
        store: SpanStore,
        service: AuditService,
        recorder: events.Recorder,
        *,
        max_body: int,
        forwarder: OtlpForwarder | None = None,
    ) -> None:
        self.store = store
        self.service = service
        self.recorder = recorder
        self.max_body = max_body
        self.forwarder = forwarder
        self.stats = SpanStats()

    async def export(self, request: Request) -> Response:
        reporter = peer_spiffe_id(request)
        if reporter is None:  # the mTLS listener admits none without one
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        headers = request.headers
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        try:
            body = await _read(request, self.max_body)
            # parsed and judged off the event loop, which takes every component's events
            judged = await asyncio.to_thread(
                _judged,
                body,
                headers.get("content-type", ""),
                headers.get("content-encoding", ""),
                self.max_body,
                reporter,
            )
        except TrustmeshError as exc:
            return failure_response(exc)
        received = int(self.service.clock() * 1_000_000_000)
        try:
            stored = await self.store.add(judged.spans, received=received)
        except Exception:  # nothing acknowledged: the exporter retries
            log.exception("audit: spans could not be stored")
            return failure_response(UnavailableError("the audit collector cannot store spans now"))
        self.stats.stored += len(stored)
        self.stats.duplicates += len(judged.spans) - len(stored)
        self.stats.rejected += judged.rejected
        if stored and self.forwarder is not None:
            forwarded = narrowed(judged.forward, stored)
            if forwarded:
                self.forwarder.submit(forwarded, len(stored))
        return _answer(judged.rejected, judged.reason, media)

    async def trace(self, request: Request, actor: Actor) -> Response:
        trace_id = trace_id_of(str(request.path_params["trace_id"]))
        found, cut = await self.store.trace(trace_id)
        logged = await self.service.search(Query(trace_id=trace_id, limit=MAX_LIMIT))
        record_read(self.recorder, "audit-trace", actor)
        body: dict[str, Any] = {
            "trace_id": trace_id,
            "spans": [span.to_dict() for span in found],
            "events": logged,
        }
        if cut or len(logged) >= MAX_LIMIT:
            body["truncated"] = True
        return JSONResponse(body, headers=_NO_STORE)


class SpanRetention:
    """Removes spans older than ``retention`` by ``clock`` (epoch seconds)."""

    def __init__(self, store: SpanStore, retention: timedelta, clock: Callable[[], float]) -> None:
        self.store = store
        self.retention_ns = int(retention.total_seconds() * 1_000_000_000)
        self.clock = clock

    async def prune(self) -> int:
        """Remove what is past retention now; how many spans."""
        now_ns = int(self.clock() * 1_000_000_000)
        return await self.store.prune(before_ns=now_ns - self.retention_ns)

    async def run(self, interval: float) -> None:
        """:meth:`prune` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.prune()
            except Exception:  # the store or a bug: logged, and the next run tries again
                log.exception("audit: pruning spans failed")
                continue
            if removed:
                log.info("audit: %d spans past retention removed", removed)
