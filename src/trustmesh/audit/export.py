"""Alerts and events out to other tools: JSON lines (a file any SIEM ingests), syslog
(:mod:`trustmesh.audit.syslog`) and OpenTelemetry logs over OTLP/HTTP with JSON
encoding (to an OpenTelemetry Collector, which forwards to Elastic, Splunk, OpenSearch…).

A record is an alert (``Alert.to_dict()`` / ``StoredAlert.to_dict()``) or an OCSF event
(``Event.to_ocsf()``, as the ledger stores it: it has a ``class_uid``). Pass records
through :class:`~trustmesh.audit.pseudonymise.Pseudonymiser` first where the receiver
should not learn who is who.

OTLP (opentelemetry-proto ``logs/v1``, JSON mapping of protobuf): one POST to
``<endpoint>/v1/logs`` per ``batch`` records, ``{"resourceLogs": [{"resource": …,
"scopeLogs": [{"scope": …, "logRecords": […]}]}]}``; each log record has
``timeUnixNano`` (the alert's window end, the event's time; 64-bit integers as decimal
strings), ``observedTimeUnixNano``, ``severityNumber`` / ``severityText`` (critical
FATAL 21, high ERROR 17, medium WARN 13, low INFO2 10, informational INFO 9), ``body``
(the record as compact JSON), ``attributes`` (the fields a query filters on) and, for
an event with a 32-hex trace id, ``traceId``. The endpoint is https, or http to a
loopback address only (a collector sidecar on the same host).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, Final
from urllib.parse import urlsplit

from trustmesh import __version__
from trustmesh.audit._delivery import Retry, post, tls_context
from trustmesh.audit.syslog import SyslogSender
from trustmesh.errors import ConfigError, UnavailableError

__all__ = ["OtlpExporter", "export_syslog", "otlp_logs", "write_jsonl"]

_LEVEL_SEVERITY: Final = {
    "critical": (21, "FATAL"),
    "high": (17, "ERROR"),
    "medium": (13, "WARN"),
    "low": (10, "INFO2"),
    "informational": (9, "INFO"),
}
_OCSF_LEVEL: Final = {1: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical"}
_TRACE = re.compile(r"[0-9a-f]{32}")
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _is_event(record: Mapping[str, Any]) -> bool:
    return "class_uid" in record


def write_jsonl(records: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    """Write each record as one line of compact, ASCII-only JSON (a control character
    in a value is escaped: one record, one line); how many were written."""
    count = 0
    for record in records:
        out.write(_dumps(record) + "\n")
        count += 1
    return count


def export_syslog(records: Iterable[Mapping[str, Any]], sender: SyslogSender) -> int:
    """Queue each record on ``sender`` (an event as an event, an alert as an alert);
    how many were queued (the rest found the queue full: ``sender.stats.dropped``)."""
    return sum(sender.submit_event(r) if _is_event(r) else sender.submit(r) for r in records)


def _any_value(value: object) -> dict[str, Any]:
    """An OTLP ``AnyValue`` (ints as decimal strings: the protobuf JSON mapping)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Mapping):
        return {"stringValue": _dumps(value)}
    return {"stringValue": json.dumps(value, default=str)}


def _attributes(pairs: Iterable[tuple[str, object]]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in pairs if v is not None]


def _get(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _log_record(record: Mapping[str, Any], observed_ns: int) -> dict[str, Any]:
    if _is_event(record):
        severity_id = record.get("severity_id")
        level = _OCSF_LEVEL.get(severity_id if isinstance(severity_id, int) else 0)
        when = record.get("time")
        pairs: list[tuple[str, object]] = [
            ("ocsf.class_uid", record.get("class_uid")),
            ("ocsf.class_name", record.get("class_name")),
            ("ocsf.activity_name", record.get("activity_name")),
            ("ocsf.uid", _get(record, "metadata", "uid")),
            ("ocsf.status", record.get("status")),
            ("trustmesh.component", _get(record, "actor", "app_name")),
            ("trustmesh.decision", _get(record, "unmapped", "trustmesh", "decision")),
            ("trustmesh.reason", _get(record, "unmapped", "trustmesh", "reason")),
            ("enduser.id", _get(record, "actor", "user", "uid")),
            ("client.address", _get(record, "src_endpoint", "ip")),
        ]
    else:
        level = str(record.get("level"))
        when = _get(record, "window", "end")
        events = record.get("event_uids")
        pairs = [
            ("trustmesh.alert.uid", record.get("uid")),
            ("trustmesh.alert.id", record.get("id")),
            ("trustmesh.alert.rule_id", record.get("rule_id")),
            ("trustmesh.alert.title", record.get("title")),
            ("trustmesh.alert.level", record.get("level")),
            ("trustmesh.alert.kind", record.get("kind")),
            ("trustmesh.alert.measure", record.get("measure")),
            ("trustmesh.alert.event_count", len(events) if isinstance(events, list) else None),
        ]
        group = record.get("group")
        if isinstance(group, Mapping):
            pairs += [(f"trustmesh.alert.group.{k}", v) for k, v in group.items()]
    number, text = _LEVEL_SEVERITY.get(level or "", (0, "UNSPECIFIED"))
    time_ns = when * 1_000_000 if isinstance(when, int) and not isinstance(when, bool) else 0
    out: dict[str, Any] = {
        "timeUnixNano": str(time_ns),
        "observedTimeUnixNano": str(observed_ns),
        "severityNumber": number,
        "severityText": text,
        "body": {"stringValue": _dumps(record)},
        "attributes": _attributes(pairs),
    }
    trace = _get(record, "metadata", "correlation_uid")
    if isinstance(trace, str) and _TRACE.fullmatch(trace) and trace != "0" * 32:
        out["traceId"] = trace
    return out


def otlp_logs(
    records: Iterable[Mapping[str, Any]],
    *,
    observed_ns: int,
    service_name: str = "trustmesh-audit",
) -> dict[str, Any]:
    """The ``ExportLogsServiceRequest`` (JSON) for ``records`` (module docstring)."""
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": _attributes([("service.name", service_name)])},
                "scopeLogs": [
                    {
                        "scope": {"name": "trustmesh.audit", "version": __version__},
                        "logRecords": [_log_record(r, observed_ns) for r in records],
                    }
                ],
            }
        ]
    }


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OtlpExporter:
    """Sends records as OTLP logs to ``endpoint`` (``https://collector:4318``, or
    ``http://127.0.0.1:4318``), ``batch`` per request, synchronously (from a thread:
    ``asyncio.to_thread``). ``headers``: extra request headers (an API key the
    collector wants); ``clock``: unix seconds, for ``observedTimeUnixNano``."""

    def __init__(
        self,
        endpoint: str,
        *,
        ca_file: str | None = None,
        headers: Mapping[str, str] | None = None,
        service_name: str = "trustmesh-audit",
        batch: int = 512,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            url = urlsplit(endpoint.rstrip("/"))
            url.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError("otlp: the endpoint is not a valid URL") from None
        host = url.hostname or ""
        if not host or not (url.scheme == "https" or (url.scheme == "http" and _loopback(host))):
            raise ConfigError("otlp: the endpoint is https://host[:port], or http:// to loopback")
        if url.username is not None or url.password is not None:
            raise ConfigError("otlp: the endpoint must not carry credentials")
        path = url.path if url.path.endswith("/v1/logs") else f"{url.path}/v1/logs"
        self.url = url._replace(path=path, query="", fragment="")
        self.context = tls_context(ca_file) if url.scheme == "https" else None
        self.headers = {
            **dict(headers or {}),
            "Content-Type": "application/json",
            "User-Agent": f"trustmesh-audit/{__version__}",
        }
        self.service_name = service_name
        self.batch = max(1, batch)
        self.timeout = timeout
        self.clock = clock

    def export(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Send ``records``; how many were accepted. A network error or a non-2xx
        answer raises :class:`~trustmesh.errors.UnavailableError` (what was sent before
        it stays sent: resend from the record after the count the error carries in
        its detail)."""
        sent = 0
        pending: list[Mapping[str, Any]] = []
        for record in records:
            pending.append(record)
            if len(pending) >= self.batch:
                sent += self._send(pending, sent)
                pending = []
        if pending:
            sent += self._send(pending, sent)
        return sent

    def _send(self, records: list[Mapping[str, Any]], sent: int) -> int:
        observed = int(self.clock() * 1e9)
        payload = otlp_logs(records, observed_ns=observed, service_name=self.service_name)
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            answer, connection = post(
                self.url, body, self.headers, context=self.context, timeout=self.timeout
            )
        except Retry as exc:
            raise UnavailableError(f"otlp: {exc.why} after {sent} records") from None
        connection.close()
        if not 200 <= answer.status < 300:
            raise UnavailableError(f"otlp: HTTP {answer.status} after {sent} records")
        return len(records)
