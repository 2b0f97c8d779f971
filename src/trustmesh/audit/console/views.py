"""What a page shows of the records it is given: pure shaping, no I/O. Every value is
text by the time a template sees it, and the templates escape all of it (Jinja's
autoescape): a field a workload made up — ``<script>`` in a message — shows as text."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trustmesh.audit.search import Query
from trustmesh.audit.spans import trace_id_of
from trustmesh.audit.trace_tree import in_tree_order, nanoseconds
from trustmesh.errors import UsageError

__all__ = ["DIGITS", "EVENT_FILTERS", "event_query", "event_row", "span_rows", "when"]

#: The events page's filters (query parameters), each an audit :class:`Query` field.
EVENT_FILTERS = ("decision", "reason", "principal", "class_uid", "trace_id", "minutes")
_DECISIONS = ("allow", "deny", "error")
_MAX_TEXT = 300
#: A whole number as a URL carries one: ASCII digits only (``str.isdigit`` takes "²").
DIGITS = re.compile(r"[0-9]{1,18}")


def when(epoch_ms: object) -> str:
    if type(epoch_ms) is not int:
        return ""
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    return text[:_MAX_TEXT]


def event_query(
    params: Mapping[str, str], now: dt.datetime, *, after: int | None = None, limit: int = 100
) -> Query:
    """The audit query the events page's filters stand for; UsageError names a bad one.
    ``after``: a feed's (oldest first, after that seq); else the newest first, before
    the ``before`` parameter's seq when given (the next page of older ones)."""
    before = params.get("before") or None
    if before is not None and not DIGITS.fullmatch(before):
        raise UsageError("before: the oldest seq shown")
    decision = params.get("decision") or None
    if decision is not None and decision not in _DECISIONS:
        raise UsageError(f"decision: one of {', '.join(_DECISIONS)}")
    class_uid = None
    if params.get("class_uid"):
        if not DIGITS.fullmatch(params["class_uid"]) or len(params["class_uid"]) > 6:
            raise UsageError("class_uid: an OCSF class number, such as 6003")
        class_uid = int(params["class_uid"])
    trace_id = trace_id_of(params["trace_id"]) if params.get("trace_id") else None
    since = None
    if params.get("minutes"):
        minutes = params["minutes"]
        if not DIGITS.fullmatch(minutes) or not 1 <= int(minutes) <= 100_000:
            raise UsageError("minutes: a whole number from 1 to 100000")
        since = now - dt.timedelta(minutes=int(minutes))
    reason, principal = params.get("reason") or None, params.get("principal") or None
    for name, value in (("reason", reason), ("principal", principal)):
        if value is not None and len(value) > 256:
            raise UsageError(f"{name}: at most 256 characters")
    return Query(
        since=since,
        class_uid=class_uid,
        decision=decision,
        trace_id=trace_id,
        after_seq=after if after is not None else (int(before) if before else None),
        newest_first=after is None,
        limit=limit,
        reason=reason,
        principal=principal,
    )


def _object(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a workload may send any
    shape the ledger stores)."""
    return value if isinstance(value, dict) else {}


def _address(event: Mapping[str, Any]) -> object:
    source = event.get("src_endpoint")
    return source.get("ip") if isinstance(source, dict) else None


def event_row(event: Mapping[str, Any]) -> dict[str, str]:
    mine = _object(_object(event.get("unmapped")).get("trustmesh"))
    metadata = _object(event.get("metadata"))
    feature = _object(metadata.get("product")).get("feature")
    trace_id = mine.get("trace_id")
    attributes = mine.get("attributes")
    path = attributes.get("path") if isinstance(attributes, dict) else None
    return {
        "seq": _text(event.get("seq")),
        "uid": _text(metadata.get("uid")),
        "time": when(event.get("time")),
        "component": _text(feature.get("name") if isinstance(feature, dict) else ""),
        "class": _text(event.get("class_name")),
        "decision": _text(mine.get("decision")),
        "reason": _text(mine.get("reason")),
        # the user, else the calling workload, else the address the request came from
        "who": _text(mine.get("sub") or mine.get("peer_spiffe_id") or _address(event)),
        "message": _text(event.get("message")),
        "path": _text(path),
        "trace_id": _text(trace_id) if isinstance(trace_id, str) else "",
    }


def span_rows(spans: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trace's spans in tree order, with their offset and duration in ms."""
    if not spans:
        return []
    first = min(nanoseconds(s.get("start_ns")) for s in spans)
    found = []
    for placed in in_tree_order(spans):
        span = placed.span
        attributes = span.get("attributes") or {}
        start, end = nanoseconds(span.get("start_ns")), nanoseconds(span.get("end_ns"))
        status = attributes.get("http.response.status_code")
        found.append(
            {
                "depth": min(placed.depth, 12),
                "service": _text(span.get("service")),
                "kind": _text(span.get("kind")),
                "name": _text(span.get("name")),
                "offset": f"+{(start - first) / 1e6:.1f} ms",
                "duration": f"{(end - start) / 1e6:.1f} ms",
                "decision": _text(attributes.get("trustmesh.decision")),
                "reason": _text(attributes.get("trustmesh.reason")),
                "status": _text(status) if type(status) is int else "",
                "failed": _text(span.get("status_message"))
                if span.get("status") == "error"
                else "",
                "orphan": placed.orphan,
            }
        )
    return found
