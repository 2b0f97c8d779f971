"""Automated response: what the collector does when an alert names actions (a rule's
``response``, see :mod:`trustmesh.audit.extensions`), and how it is undone.

=====================  =========================================  =======================
action                 the call (the collector's own SVID)         undone by
=====================  =========================================  =======================
``lock-user``          provider ``POST /admin/v1/users/{login}/    ``…/unlock``
                       lock`` (and every token of the user is
                       revoked)
``revoke-tokens``      provider ``POST /admin/v1/revocations``     — (a revocation is
                       {"subject"}                                 final: the subject logs
                                                                   in again)
``block-address``      gateway ``POST /admin/v1/blocks``           ``DELETE …/blocks/
                       {"address", "seconds"}                      {address}``
``suspend-spiffe-id``  identity service ``POST /admin/v1/         ``DELETE …/suspensions
                       suspensions`` {"spiffe_id", "seconds"?}     ?spiffe_id=…``
                       (no SVID is issued for it, and services
                       refuse it; the control plane's own IDs
                       are refused: ``failed``)
=====================  =========================================  =======================

The components authorise these calls: the collector's identity may make them and no
other admin call. Every response is stored (:mod:`trustmesh.audit.response_store`) and
recorded as an event (``response-taken``: taken, planned in a dry run, failed, or
skipped) — a dry run records what it would have done and calls nothing. An address on
the never-block list (loopback by default: the stack itself, its health checks and the
operator) is never blocked: the response is ``skipped``. A call that fails is recorded
``failed`` with the reason, not retried: the alert stays, and the operator acts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trustmesh import events
from trustmesh.audit.detection import Alert
from trustmesh.audit.extensions import Action, PlannedAction
from trustmesh.audit.response_store import ResponseRecord, ResponseStore, new_id
from trustmesh.errors import ConflictError, NotFoundError, TrustmeshError, UsageError
from trustmesh.platform.admin import Actor, named_by
from trustmesh.platform.endpoints import peer_url
from trustmesh.reasons import Activity
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.tls import RotatingTLS

__all__ = [
    "NEVER_BLOCK",
    "AdminCaller",
    "Call",
    "Caller",
    "Responder",
    "call_for",
    "undo_for",
]

log = logging.getLogger("trustmesh.audit")

#: Addresses no response blocks unless the declaration says otherwise.
NEVER_BLOCK: Final = ("127.0.0.0/8", "::1/128")
_QUEUE: Final = 10_000


@dataclass(frozen=True)
class Call:
    """One admin request: to ``component`` (``auth``, ``gateway`` or ``identity``)."""

    component: str
    method: str
    path: str
    body: dict[str, Any] | None = None


#: Makes a :class:`Call`; its HTTP status and JSON answer (an exception: not reached).
Caller = Callable[[Call], Awaitable[tuple[int, Any]]]


_SUSPENSIONS: Final = "/admin/v1/suspensions"


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def call_for(action: PlannedAction) -> Call | None:
    """The call that takes ``action`` (None: trustmesh cannot take it)."""
    target = action.target
    match action.action:
        case Action.LOCK_USER:
            return Call("auth", "POST", f"/admin/v1/users/{_quoted(target)}/lock", {})
        case Action.REVOKE_TOKENS:
            body = {"subject": target, "cause": "automated-response"}
            return Call("auth", "POST", "/admin/v1/revocations", body)
        case Action.BLOCK_ADDRESS:
            seconds = max(1, (action.duration_ms or 0) // 1000)
            block = {"address": target, "seconds": seconds, "reason": "automated response"}
            return Call("gateway", "POST", "/admin/v1/blocks", block)
        case Action.SUSPEND_SPIFFE_ID:
            suspension: dict[str, Any] = {"spiffe_id": target, "cause": "automated response"}
            if action.duration_ms is not None:
                suspension["seconds"] = max(1, action.duration_ms // 1000)
            return Call("identity", "POST", _SUSPENSIONS, suspension)
    return None


def undo_for(record: ResponseRecord) -> Call:
    """The call that undoes a taken response; UsageError when none can."""
    match record.action:
        case Action.LOCK_USER:
            return Call("auth", "POST", f"/admin/v1/users/{_quoted(record.target)}/unlock", {})
        case Action.BLOCK_ADDRESS:
            return Call("gateway", "DELETE", f"/admin/v1/blocks/{_quoted(record.target)}")
        case Action.SUSPEND_SPIFFE_ID:
            query = urllib.parse.urlencode({"spiffe_id": record.target})
            return Call("identity", "DELETE", f"{_SUSPENSIONS}?{query}")
        case Action.REVOKE_TOKENS:
            raise UsageError("a revocation cannot be undone: the subject logs in again")
    raise UsageError(f"{record.action} was not taken: nothing to undo")


class AdminCaller:
    """Calls the components' admin APIs as the collector: where each listens is looked up
    at each call (:func:`trustmesh.platform.endpoints.peer_url`: its variable, else the
    file it writes under the state directory — it may start after the collector, and
    move); its SPIFFE ID is checked on every connection. The gateway's admin API is on
    its mTLS (internal) listener."""

    def __init__(self, tls: RotatingTLS, state: Path, trust_domain: str) -> None:
        self.tls = tls
        self.state = state
        self.trust_domain = trust_domain

    async def __call__(self, call: Call) -> tuple[int, Any]:
        url = peer_url(self.state, call.component)
        if url is None:
            raise ConflictError(f"the {call.component} component is not running")
        expected = f"spiffe://{self.trust_domain}/trustmesh/{call.component}"
        async with ServiceClient(self.tls, str(url), expected, retries=0, timeout=5) as client:
            answer = await client.request(call.method, call.path, json=call.body)
        try:
            body = answer.json() if answer.body else None
        except ValueError:
            body = None
        return answer.status, body


def _message(status: int, body: Any) -> str:
    if isinstance(body, dict):
        return f"HTTP {status}: {body.get('message') or body.get('error') or ''}"[:512]
    return f"HTTP {status}"


class Responder:
    """Takes the actions alerts name, in order, off the detection path (:meth:`submit`
    queues; :meth:`run` works the queue)."""

    def __init__(
        self,
        store: ResponseStore,
        caller: Caller,
        recorder: events.Recorder,
        *,
        never_block: Iterable[str] = NEVER_BLOCK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.caller = caller
        self.recorder = recorder
        self.never_block = tuple(ipaddress.ip_network(n) for n in never_block)
        self.clock = clock
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(_QUEUE)
        self.dropped = 0

    def submit(self, alerts: Sequence[Alert]) -> None:
        """Queue the alerts that name actions (a full queue: counted and logged)."""
        for alert in alerts:
            if not alert.actions:
                continue
            try:
                self._queue.put_nowait(alert)
            except asyncio.QueueFull:
                self.dropped += 1
                log.error("audit: response queue full; alert %s not acted on", alert.uid)

    async def run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self.respond(alert)
            except Exception:  # the store: logged, the next alert is still acted on
                log.exception("audit: a response could not be recorded")

    async def drain(self) -> None:
        """Act on what is queued now (tests, and a stop)."""
        while not self._queue.empty():
            await self.respond(self._queue.get_nowait())

    async def respond(self, alert: Alert) -> list[ResponseRecord]:
        return [await self._take(alert, action) for action in alert.actions]

    async def _take(self, alert: Alert, action: PlannedAction) -> ResponseRecord:
        call = call_for(action)
        if call is None:
            outcome, detail = "failed", f"{action.action.value} is not available in this release"
        elif action.action is Action.BLOCK_ADDRESS and self._never(action.target):
            outcome, detail = "skipped", "the address is on the never-block list"
        elif action.dry_run:
            outcome, detail = "planned", f"dry run: would {call.method} {call.path}"
        else:
            outcome, detail = await self._call(call)
        record = ResponseRecord(
            id=new_id(),
            time=int(self.clock() * 1000),
            alert_uid=alert.uid,
            rule_id=alert.rule_id,
            action=action.action.value,
            target=action.target,
            duration_ms=action.duration_ms,
            dry_run=action.dry_run,
            outcome=outcome,
            detail=detail[:512],
        )
        await self.store.add(record)
        self.recorder.record(
            Activity.RESPONSE_TAKEN,
            f"response {action.action.value}: {outcome}",
            attributes=_attributes(record),
        )
        return record

    def _never(self, target: str) -> bool:
        try:
            address = ipaddress.ip_address(target)
        except ValueError:
            return False  # the gateway refuses what is not an address
        return any(address in network for network in self.never_block)

    async def _call(self, call: Call) -> tuple[str, str]:
        try:
            status, body = await self.caller(call)
        except TrustmeshError as exc:
            return "failed", exc.detail
        except (OSError, TimeoutError) as exc:
            return "failed", f"{call.component} unreachable: {type(exc).__name__}"
        if status >= 300:
            return "failed", _message(status, body)
        return "taken", f"{call.method} {call.path}: HTTP {status}"

    async def undo(self, record_id: str, actor: Actor) -> ResponseRecord:
        """Undo a taken response (NotFoundError, UsageError when it cannot be undone,
        ConflictError when the component refuses or it was undone already)."""
        record = await self.store.get(record_id)
        if record is None:
            raise NotFoundError(f"no response {record_id!r}")
        if record.undone_at is not None:
            raise ConflictError("that response was undone already")
        if record.outcome != "taken":
            raise UsageError(f"that response was {record.outcome}, not taken: nothing to undo")
        call = undo_for(record)
        outcome, detail = await self._call(call)
        if outcome != "taken":
            raise ConflictError(f"could not undo: {detail}")
        now = int(self.clock() * 1000)
        if not await self.store.undo(record_id, now=now, by=actor.name, detail=detail):
            raise ConflictError("that response was undone already")
        peer, attributes = named_by(actor, _attributes(record))
        self.recorder.record(
            Activity.RESPONSE_UNDONE,
            f"response {record.action} undone",
            peer_spiffe_id=peer,
            attributes=attributes,
        )
        undone = await self.store.get(record_id)
        return undone if undone is not None else record


def _attributes(record: ResponseRecord) -> dict[str, events.AttributeValue]:
    return {
        "response_id": record.id,
        "action": record.action,
        "target": record.target[:256],
        "outcome": record.outcome,
        "dry_run": record.dry_run,
        "rule_id": record.rule_id[:128],
        "alert_uid": record.alert_uid,
        "detail": record.detail[:256],
    }
