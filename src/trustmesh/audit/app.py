"""The audit collector's HTTP API, on its mTLS listener (every caller presents an SVID of
the trust domain; its SPIFFE ID is the verified peer certificate's).

- ``POST /v1/events`` {"events": [OCSF object, …]} — any workload of the trust domain
  delivers its events: at most :data:`~trustmesh.audit.service.MAX_BATCH` events and
  :data:`MAX_BODY` bytes (``413`` otherwise: split it). ``200``
  ``{"stored", "duplicates", "quarantined"}`` once the batch is durable — an invalid
  event is quarantined with its reason, a body that is not JSON too, never refused
  silently; a retry of a batch already stored is all duplicates. ``503`` when the store
  cannot take it (nothing is acknowledged: the producer keeps the events and retries).
  No other answer refuses a delivery for what it holds: a producer's batch is never
  stuck on a ``4xx`` of the collector's making. A ``413`` is past the bounds (read no
  further than :data:`MAX_BODY`), and splitting ends it — an event alone always fits
  (the producer's spool holds at most 2 MiB an event; an event past
  :data:`~trustmesh.audit.ledger.MAX_EVENT_BYTES` is quarantined, not refused); a
  failure on the collector's side, whatever its kind, is a ``503``; and once the batch
  is durable it is acknowledged, whatever fails after (a checkpoint, an alert's
  delivery: logged, and the next tick tries again).
- ``GET /v1/health`` — the chain's head (``records``): for ``trustmesh status``.
- The operator's (``spiffe://<td>/trustmesh/operator``; anyone else ``403`` and an
  ``admin-denied`` event): ``GET /v1/events`` (filters: ``since``, ``until`` (ISO 8601),
  ``class_uid``, ``principal``, ``decision``, ``reason``, ``trace_id``, ``after`` (seq),
  ``newest``, ``limit``), ``POST /v1/verify`` {"checkpoints"?: [checkpoint line, …]}
  (the verifier's own copy of the checkpoints — prune checkpoints too — beside the
  stored ones and the file), ``GET /v1/keys`` (the checkpoints' Ed25519 public key, for
  a verifier of a copy of the log), ``POST /v1/prune`` {"dry_run"?: bool} (remove the records
  past retention now, or only count them: per class, the seqs, the prune checkpoints
  signed; ``409`` when pruning is off — see :mod:`trustmesh.audit.retention`),
  ``GET /v1/alerts`` (the stored alerts, oldest first: ``after``, the id of the last
  alert seen; ``limit``; ``rule``, a rule id; ``level``, the least level),
  ``GET /v1/quarantine``, ``POST /v1/rules/test`` {"files": {name: Sigma YAML},
  "events"?: [...]} (run rules over the given events, or the stored log: how many each
  matched, and the alerts; a rule that does not load is ``400`` with every problem),
  ``GET /v1/responses`` (the automated responses, newest first: taken, planned in a dry
  run, failed or skipped, and whether undone), ``POST /v1/responses/{id}/undo`` (``404``
  unknown, ``400`` one that cannot be undone, ``409`` undone already or refused by the
  component; see :mod:`trustmesh.audit.response`).
- Traces (:mod:`trustmesh.audit.traces`): ``POST /v1/traces`` (OTLP/HTTP, any workload,
  each span stored with the peer as its reporter) and the operator's
  ``GET /v1/traces/{trace_id}`` (the trace's spans and its audit events).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.audit.chain import checkpoint_from_line
from trustmesh.audit.detection import ReplayResult, run_rules
from trustmesh.audit.response import Responder
from trustmesh.audit.retention import Pruner
from trustmesh.audit.search import Query
from trustmesh.audit.service import MAX_BATCH, AuditService
from trustmesh.audit.traces import Traces
from trustmesh.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    TrustmeshError,
    UnavailableError,
    UsageError,
)
from trustmesh.platform.admin import (
    Actor,
    failure_response,
    guarded,
    json_object,
    operator_only,
    peer_spiffe_id,
    record_read,
)

__all__ = ["MAX_BODY", "audit_app"]

#: The most bytes one delivery may carry.
MAX_BODY: Final = 4 * 1024 * 1024
#: The most recorded events ``rules/test`` replays.
MAX_REPLAY: Final = 200_000
_NO_STORE: Final = {"Cache-Control": "no-store"}

log = logging.getLogger("trustmesh.audit")


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 18:
        raise UsageError(f"{name} must be a non-negative integer")
    return int(value)


def _time(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{name} must be an ISO 8601 time with its offset") from None
    if when.tzinfo is None:
        raise UsageError(f"{name} must be an ISO 8601 time with its offset")
    return when


def query_of(request: Request) -> Query:
    """The search a ``GET /v1/events`` asks for (UsageError: 400)."""
    params = request.query_params
    unknown = set(params) - {
        "since",
        "until",
        "class_uid",
        "principal",
        "decision",
        "reason",
        "trace_id",
        "after",
        "newest",
        "limit",
    }
    if unknown:
        raise UsageError(f"unknown filter: {sorted(unknown)[0][:40]!r}")
    return Query(
        since=_time(request, "since"),
        until=_time(request, "until"),
        class_uid=_int(request, "class_uid"),
        principal=params.get("principal"),
        decision=params.get("decision"),
        reason=params.get("reason"),
        trace_id=params.get("trace_id"),
        after_seq=_int(request, "after"),
        newest_first=params.get("newest") in ("1", "true"),
        limit=_int(request, "limit", 100) or 100,
    )


class _Collector:
    def __init__(
        self,
        service: AuditService,
        recorder: events.Recorder,
        responder: Responder | None,
        pruner: Pruner | None = None,
    ) -> None:
        self.service = service
        self.recorder = recorder
        self.responder = responder
        self.pruner = pruner

    async def prune(self, request: Request, actor: Actor) -> Response:
        body = json_object(await request.body(), MAX_BODY, empty=True)
        dry_run = body.get("dry_run", False)
        if set(body) - {"dry_run"} or not isinstance(dry_run, bool):
            raise UsageError('the body is {"dry_run"?: true or false}')
        if self.pruner is None:
            raise ConflictError(
                "pruning is off: no retention is declared, or on PostgreSQL no "
                "audit.retention.database may delete records"
            )
        if dry_run:  # a read of the log; a prune records itself (records-pruned)
            done = await self.pruner.prune(dry_run=True)
            record_read(self.recorder, "audit-prune-dry-run", actor)
        else:
            done = await self.pruner.prune(by=actor.name)
        return JSONResponse(done.to_dict(), headers=_NO_STORE)

    async def responses(self, request: Request, actor: Actor) -> Response:
        limit = min(_int(request, "limit", 100) or 100, 1000)
        found = await self._responder().store.newest(limit=limit)
        record_read(self.recorder, "audit-responses", actor)
        return JSONResponse({"responses": [r.to_dict() for r in found]}, headers=_NO_STORE)

    async def undo(self, request: Request, actor: Actor) -> Response:
        json_object(await request.body(), MAX_BODY, empty=True)
        record = await self._responder().undo(request.path_params["id"][:64], actor)
        return JSONResponse(record.to_dict())

    def _responder(self) -> Responder:
        if self.responder is None:
            raise NotFoundError("automated response is not running in this collector")
        return self.responder

    async def deliver(self, request: Request) -> Response:
        reporter = peer_spiffe_id(request)
        if reporter is None:  # the mTLS listener admits none without one
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        raw = await _body(request)
        if raw is None:
            return failure_response(PayloadTooLargeError(f"a delivery is at most {MAX_BODY} bytes"))
        try:
            batch = _batch(raw)
        except UsageError as exc:  # kept, with why, never dropped: it may be all we get
            try:
                await self.service.ledger.quarantine(raw, exc.detail, now=self.service.now())
            except Exception:  # not kept: not acknowledged (the producer retries)
                log.exception("audit: a delivery could not be quarantined")
                return failure_response(UnavailableError("the audit log cannot store events now"))
            return JSONResponse({"stored": 0, "duplicates": 0, "quarantined": 1})
        if len(batch) > MAX_BATCH:
            return failure_response(
                PayloadTooLargeError(f"a delivery is at most {MAX_BATCH} events")
            )
        try:
            ingested = await self.service.ingest(batch, reporter)
        except Exception:  # nothing acknowledged: the producer keeps the events, retries
            log.exception("audit: a delivery could not be stored")
            return failure_response(UnavailableError("the audit log cannot store events now"))
        return JSONResponse(ingested.answer())

    async def health(self, _request: Request) -> Response:
        seq, _ = await self.service.ledger.head()
        return JSONResponse({"status": "ok", "records": seq})

    async def search(self, request: Request, actor: Actor) -> Response:
        query = query_of(request)
        found = await self.service.search(query)
        record_read(self.recorder, "audit-events", actor)
        return JSONResponse({"events": found}, headers=_NO_STORE)

    async def verify(self, request: Request, actor: Actor) -> Response:
        body = json_object(await request.body(), MAX_BODY, empty=True)
        lines = body.get("checkpoints", [])
        if set(body) - {"checkpoints"} or not isinstance(lines, list):
            raise UsageError('the body is {"checkpoints": [checkpoint line, …]}')
        try:
            given = [checkpoint_from_line(str(line).encode()) for line in lines]
        except TrustmeshError as exc:
            raise UsageError(f"a checkpoint line is not one: {exc.detail}") from None
        # both kinds go on to Ledger.verify, which takes both (service.verify's hint
        # names the older one)
        result = await self.service.verify(given or None)  # type: ignore[arg-type]
        record_read(self.recorder, "audit-verify", actor)
        finding = result.finding
        return JSONResponse(
            {
                "intact": finding is None,
                "finding": None
                if finding is None
                else {"kind": finding.kind.value, "seq": finding.seq, "message": str(finding)},
                "records": result.records,
                "covered": result.covered,
                "unsigned": result.unsigned,
                "checkpoints": result.checkpoints,
                "pruned": result.pruned,
            }
        )

    async def keys(self, _: Request, actor: Actor) -> Response:
        """The public key the checkpoints are signed with, for a verifier of its own (a
        copy of the log, checked away from this collector)."""
        record_read(self.recorder, "audit-keys", actor)
        public = base64.urlsafe_b64encode(self.service.public_key).rstrip(b"=").decode()
        used = await self.service.ledger.key_use(self.service.key_id)
        first, last = (None, None) if used is None else (_iso_ms(used[0]), _iso_ms(used[1]))
        key = {"key_id": self.service.key_id, "alg": "Ed25519", "public_key": public}
        dates = {"first_signed": first, "last_signed": last}  # its age, as checkpoints say
        return JSONResponse({"keys": [key | dates]}, headers=_NO_STORE)

    async def alerts(self, request: Request, actor: Actor) -> Response:
        after = _int(request, "after", 0) or 0
        limit = min(_int(request, "limit", 100) or 100, 1000)
        store = self.service.alert_store
        if store is not None:
            rule, level = request.query_params.get("rule"), request.query_params.get("level")
            listed = await store.list(after_id=after, limit=limit, rule=rule, level=level)
            found = [a.to_dict() for a in listed]
        else:  # a collector without a store (tests of detection alone): this process's
            kept = self.service.alerts
            found = [
                {"id": index, **alert.to_dict()}
                for index, alert in enumerate(kept, 1)
                if index > after
            ][:limit]
        record_read(self.recorder, "audit-alerts", actor)
        return JSONResponse({"alerts": found}, headers=_NO_STORE)

    async def test_rules(self, request: Request, actor: Actor) -> Response:
        body = json_object(await request.body(), MAX_BODY)
        files, given = body.get("files"), body.get("events")
        if (
            set(body) - {"files", "events"}
            or not isinstance(files, dict)
            or not files
            or not all(isinstance(v, str) for v in files.values())
            or not (given is None or isinstance(given, list))
        ):
            raise UsageError('the body is {"files": {name: Sigma YAML}, "events"?: [...]}')
        recorded = given if given is not None else await self._recorded()
        try:
            result = await asyncio.to_thread(_run_rules, files, recorded)
        except ConfigError as exc:
            problems = list(exc.problems)
            return JSONResponse(
                {"error": "invalid_rules", "message": "\n".join(problems), "problems": problems},
                status_code=400,
            )
        record_read(self.recorder, "audit-rules-test", actor)
        return JSONResponse(
            {
                "events": result.events,
                "matches": dict(result.matches),
                "alerts": [alert.to_dict() for alert in result.alerts],
            }
        )

    async def _recorded(self) -> list[dict[str, Any]]:
        """The stored log, oldest first, up to :data:`MAX_REPLAY` events."""
        found: list[dict[str, Any]] = []
        while len(found) < MAX_REPLAY:
            after = found[-1]["seq"] if found else None
            page = await self.service.search(Query(after_seq=after, limit=1000))
            found += page
            if len(page) < 1000:
                break
        return found[:MAX_REPLAY]

    async def quarantine(self, request: Request, actor: Actor) -> Response:
        limit = min(_int(request, "limit", 100) or 100, 1000)
        rows = await self.service.ledger.quarantined(limit=limit)
        record_read(self.recorder, "audit-quarantine", actor)
        return JSONResponse(
            {
                "quarantined": [
                    {
                        "id": q.id,
                        "received": q.received,
                        "reason": q.reason,
                        "size": q.size,
                        "sha256": q.digest.hex(),
                    }
                    for q in rows
                ]
            },
            headers=_NO_STORE,
        )


def _run_rules(files: dict[str, str], recorded: list[Any]) -> ReplayResult:
    """Run rule texts (named as their files were) over ``recorded``."""
    with tempfile.TemporaryDirectory(prefix="trustmesh-rules-") as folder:
        paths = []
        for index, (name, text) in enumerate(files.items()):
            stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name)
            path = Path(folder) / f"{index:03d}-{stem or 'rules'}"
            path = path.with_suffix(".yml")
            path.write_text(text)
            paths.append(path)
        events_ = [e for e in recorded if isinstance(e, dict)]
        return run_rules(paths, events_)


def _iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def _body(request: Request) -> bytes | None:
    """The request's body; None past :data:`MAX_BODY` bytes (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: ``raw.translate(_NUMBERS)``: each decimal digit a ``0``, each byte a JSON number may
#: follow (``-``, ``:``, ``[``, ``,``, whitespace) a ``1``, anything else an ``x``.
_NUMBERS: Final = bytes(
    0x30 if 0x30 <= i <= 0x39 else 0x31 if i in b"-:[, \t\n\r" else 0x78 for i in range(256)
)
#: The start of an integer orjson cannot hold (below -2**63 or from 2**64 up: 19 digits
#: at least), as ``_NUMBERS`` writes it.
_LONG: Final = b"1" + b"0" * 19


def _batch(raw: bytes) -> list[object]:
    """The events of a delivery. Parsed by orjson (measured on these bodies: 4 µs an
    event against the standard parser's 6, and 2.5 against 5 without the GC) where it
    reads what the standard parser reads; that one reads the rest, as it read every
    delivery before. orjson reads an integer past 64 bits as a float (an event would be
    stored with a value it did not say): a body with 19 digits in a row where a number
    may start — a long number, or a string that happens to hold ``:`` or ``,`` and 19
    digits — goes to the standard parser. So does one orjson refuses: NaN, Infinity,
    a lone surrogate, UTF-16, nesting past 1024 — taken as before, and quarantined
    event by event where an event may not hold it."""
    doc: object = _UNREAD
    if raw.translate(_NUMBERS).find(_LONG) < 0:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(raw)
    if doc is _UNREAD:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise UsageError("the delivery is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"events"} or not isinstance(doc["events"], list):
        raise UsageError('the delivery is not {"events": [...]}')
    events_: list[object] = doc["events"]
    return events_


_UNREAD: Final = object()


def audit_app(
    service: AuditService,
    recorder: events.Recorder,
    operator: str,
    responder: Responder | None = None,
    pruner: Pruner | None = None,
    traces: Traces | None = None,
) -> Starlette:
    """``traces``: the trace endpoints (None: not served)."""
    collector = _Collector(service, recorder, responder, pruner)

    async def as_operator(request: Request) -> Actor:
        return operator_only(request, operator)

    def admin(action: str, handler: Any) -> Any:
        return guarded(action, as_operator, handler, recorder)

    traced = (
        []
        if traces is None
        else [
            Route("/v1/traces", traces.export, methods=["POST"]),
            Route("/v1/traces/{trace_id}", admin("audit-trace", traces.trace), methods=["GET"]),
        ]
    )
    return Starlette(
        routes=[
            *traced,
            Route("/v1/events", collector.deliver, methods=["POST"]),
            Route("/v1/events", admin("audit-events", collector.search), methods=["GET"]),
            Route("/v1/health", collector.health, methods=["GET"]),
            Route("/v1/verify", admin("audit-verify", collector.verify), methods=["POST"]),
            Route("/v1/keys", admin("audit-keys", collector.keys), methods=["GET"]),
            Route("/v1/prune", admin("audit-prune", collector.prune), methods=["POST"]),
            Route("/v1/alerts", admin("audit-alerts", collector.alerts), methods=["GET"]),
            Route(
                "/v1/rules/test", admin("audit-rules-test", collector.test_rules), methods=["POST"]
            ),
            Route(
                "/v1/quarantine", admin("audit-quarantine", collector.quarantine), methods=["GET"]
            ),
            Route("/v1/responses", admin("audit-responses", collector.responses), methods=["GET"]),
            Route(
                "/v1/responses/{id}/undo",
                admin("audit-response-undo", collector.undo),
                methods=["POST"],
            ),
        ]
    )
