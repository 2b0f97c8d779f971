"""Alerts and events to a SIEM's syslog receiver: RFC 5424 messages over TLS
(RFC 5425), framed by octet counting.

A message (RFC 5424 §6)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ELEMENT…] MSG

- PRI = facility × 8 + severity (§6.2.1); the facility defaults to 13, "log audit"; the
  severity from the alert's level (critical 2, high 3, medium 4, low 5, informational
  6) or the OCSF ``severity_id`` (fatal 1 … informational 6);
- TIMESTAMP: RFC 3339 in UTC with milliseconds — the alert's window end, the event's
  ``time``;
- HOSTNAME, APP-NAME, PROCID, MSGID: printable US-ASCII (other characters become
  ``_``), cut to 255, 48, 128 and 32 characters; MSGID ``alert`` or ``ocsf-<class_uid>``;
- structured data (§6.3): ``[trustmesh@32473 …]`` with the alert's uid, rule, level,
  kind, measure, window and event count, or the event's uid, class, activity,
  severity, status, decision, reason, subject, source address and trace; an alert's
  group in ``[group@32473 field="value" …]``. 32473 is the private enterprise number
  RFC 5612 reserves for examples: pass ``enterprise`` to use your own. Parameter names
  are at most 32 printable characters without ``=``, space, ``]`` or ``"`` (a longer
  group field name is cut to 23 and suffixed with ``~`` and 8 hex digits of its
  SHA-256); in values ``"``, ``\\`` and ``]`` are escaped with a backslash (§6.3.3);
- MSG: the whole alert or event as compact JSON, ASCII only.

Framing (RFC 5425 §4.3, RFC 6587 §3.4.1): ``MSG-LEN SP SYSLOG-MSG``, the length in
octets, so a message may hold any byte. Transport: TLS 1.2 or later, the receiver's
certificate checked against ``ca_file`` and its name (``server_name``, default the
host). With ``cert_file`` and ``key_file`` the sender presents a client certificate to
a receiver that asks for one (RFC 5425 §4.2: mutual authentication; rsyslog's
``StreamDriverAuthMode x509/certvalid``, syslog-ng's ``peer-verify(required-trusted)``):
the key file must be readable by its owner only, and both files are loaded when the
sender is made, so a missing, unreadable, unparsable or mismatched one stops the start
with a :class:`~trustmesh.errors.ConfigError` naming the file and the setting. TCP has
no acknowledgement: a message written just before the connection breaks may be lost (a
connection the receiver closed is noticed and replaced before writing).

A receiver may refuse this client (no certificate, or one it does not trust). In TLS 1.2
it says so within the handshake. In TLS 1.3 the client's handshake ends before the
server has checked the client's certificate (RFC 8446 §4.4.2, §4.6.1): a refusal is an
alert that arrives later, after a first message may have been written — and lost while
counted as delivered. So on a new TLS 1.3 connection the sender first waits (at most
``accept_wait`` seconds) for the receiver's first record: a session ticket
(RFC 8446 §4.6.1) means it accepted; an alert or a close, that it refused — retried like
any TLS error, then given up. A receiver that sends no ticket costs that wait once per
connection, and a refusal later than it is noticed only at the next message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import select
import socket
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from trustmesh.audit._delivery import (
    Backoff,
    OneWorker,
    Retry,
    Worker,
    load_client_certificate,
    tls_context,
)
from trustmesh.config.audit import SyslogConfig
from trustmesh.errors import ConfigError

__all__ = [
    "FACILITY_LOG_AUDIT",
    "SyslogSender",
    "format_alert",
    "format_event",
    "frame",
    "load_syslog",
]

#: RFC 5424 §6.2.1: facility 13, "log audit".
FACILITY_LOG_AUDIT: Final = 13
#: RFC 5612: the private enterprise number for documentation and examples.
_EXAMPLE_PEN: Final = 32473
_LEVEL_SEVERITY: Final = {"critical": 2, "high": 3, "medium": 4, "low": 5, "informational": 6}
_OCSF_SEVERITY: Final = {0: 6, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1, 99: 6}
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_NOT_NAME = re.compile(r'[^\x21-\x7e]|[= \]"]')
_ESCAPED = re.compile(r'(["\\\]])')
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_VALUE = 1024  # characters of one structured-data value


def _header(value: str, limit: int) -> str:
    """A header field (§6.2): printable US-ASCII, at most ``limit``; "-" when empty."""
    return _NOT_PRINTABLE.sub("_", value)[:limit] or "-"


def _name(value: str) -> str:
    """An SD-NAME (§6.3.2): 1 to 32 printable characters but ``= ] "`` and space."""
    name = _NOT_NAME.sub("_", value) or "_"
    if len(name) > 32:
        name = f"{name[:23]}~{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return name


def _value(value: object) -> str:
    """A PARAM-VALUE (§6.3.3): ``"``, ``\\`` and ``]`` escaped."""
    if value is None or isinstance(value, str | int | bool):
        text = (
            "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        )
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return _ESCAPED.sub(r"\\\1", text[:_MAX_VALUE])


def _element(sd_id: str, params: list[tuple[str, object]]) -> str:
    inside = "".join(f' {_name(k)}="{_value(v)}"' for k, v in params if v is not None)
    return f"[{sd_id}{inside}]"


def _timestamp(epoch_ms: object) -> str:
    """RFC 3339 (§6.2.3) in UTC with milliseconds; NILVALUE when there is no time."""
    if not isinstance(epoch_ms, int) or isinstance(epoch_ms, bool):
        return "-"
    try:
        when = _EPOCH + timedelta(milliseconds=epoch_ms)
    except OverflowError:
        return "-"
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _message(
    pri: int,
    timestamp: str,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str,
    sd: str,
    body: Mapping[str, Any],
) -> bytes:
    msg = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    header = (
        f"<{pri}>1 {timestamp} {_header(hostname, 255)} {_header(app_name, 48)} "
        f"{_header(procid, 128)} {_header(msgid, 32)}"
    )
    return f"{header} {sd} {msg}".encode()


def _pri(facility: int, severity: int) -> int:
    if not 0 <= facility <= 23:
        raise ConfigError("syslog: the facility is 0 to 23 (RFC 5424 §6.2.1)")
    return facility * 8 + severity


def format_alert(
    alert: Mapping[str, Any],
    *,
    hostname: str,
    app_name: str = "trustmesh-audit",
    procid: str = "-",
    facility: int = FACILITY_LOG_AUDIT,
    enterprise: int = _EXAMPLE_PEN,
) -> bytes:
    """The RFC 5424 message (unframed) for ``alert`` (an ``Alert.to_dict()`` or
    ``StoredAlert.to_dict()``)."""
    found = alert.get("window")
    window: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    events = alert.get("event_uids")
    params: list[tuple[str, object]] = [
        ("uid", alert.get("uid")),
        ("id", alert.get("id")),
        ("rule_id", alert.get("rule_id")),
        ("title", alert.get("title")),
        ("level", alert.get("level")),
        ("kind", alert.get("kind")),
        ("measure", alert.get("measure")),
        ("window_start", window.get("start")),
        ("window_end", window.get("end")),
        ("events", len(events) if isinstance(events, list) else None),
    ]
    sd = _element(f"trustmesh@{enterprise}", params)
    group = alert.get("group")
    if isinstance(group, Mapping) and group:
        sd += _element(f"group@{enterprise}", [(str(k), v) for k, v in group.items()])
    severity = _LEVEL_SEVERITY.get(str(alert.get("level")), 6)
    stamp = _timestamp(window.get("end"))
    return _message(_pri(facility, severity), stamp, hostname, app_name, procid, "alert", sd, alert)


def format_event(
    event: Mapping[str, Any],
    *,
    hostname: str,
    app_name: str = "trustmesh-audit",
    procid: str = "-",
    facility: int = FACILITY_LOG_AUDIT,
    enterprise: int = _EXAMPLE_PEN,
) -> bytes:
    """The RFC 5424 message (unframed) for an OCSF event (``Event.to_ocsf()``, as the
    ledger stores it)."""

    def part(name: str) -> Mapping[str, Any]:
        value = event.get(name)
        return value if isinstance(value, Mapping) else {}

    trustmesh = part("unmapped").get("trustmesh")
    mine: Mapping[str, Any] = trustmesh if isinstance(trustmesh, Mapping) else {}
    params: list[tuple[str, object]] = [
        ("uid", part("metadata").get("uid")),
        ("class_uid", event.get("class_uid")),
        ("activity", event.get("activity_name")),
        ("severity", event.get("severity")),
        ("status", event.get("status")),
        ("decision", mine.get("decision")),
        ("reason", mine.get("reason")),
        ("sub", mine.get("sub")),
        ("spiffe_id", mine.get("spiffe_id")),
        ("src_ip", part("src_endpoint").get("ip")),
        ("trace_id", mine.get("trace_id")),
    ]
    sd = _element(f"trustmesh@{enterprise}", params)
    severity_id = event.get("severity_id")
    severity = _OCSF_SEVERITY.get(severity_id if isinstance(severity_id, int) else 0, 6)
    msgid = f"ocsf-{event.get('class_uid')}"
    return _message(
        _pri(facility, severity),
        _timestamp(event.get("time")),
        hostname,
        app_name,
        procid,
        msgid,
        sd,
        event,
    )


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 5425 §4.3): ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


class SyslogSender(OneWorker[bytes]):
    """Sends alerts and events to ``host``:``port`` over TLS (module docstring), from a
    bounded queue on a thread of its own (:mod:`trustmesh.audit._delivery`: retries
    with backoff on a network or TLS error, drops counted). ``hostname``: this
    collector's name in each message's HEADER; ``cert_file`` and ``key_file``: the
    client certificate, both or neither; ``where``: the settings' key path in the
    messages of a :class:`ConfigError`."""

    def __init__(
        self,
        host: str,
        port: int,
        ca_file: str | None,
        *,
        hostname: str,
        app_name: str = "trustmesh-audit",
        facility: int = FACILITY_LOG_AUDIT,
        enterprise: int = _EXAMPLE_PEN,
        server_name: str | None = None,
        max_queue: int = 10_000,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] | None = None,
        timeout: float = 10.0,
        accept_wait: float = 1.0,
        cert_file: str | None = None,
        key_file: str | None = None,
        where: str = "syslog",
    ) -> None:
        if not host or not 1 <= port <= 65535:
            raise ConfigError("syslog: a host and a port from 1 to 65535")
        _pri(facility, 0)
        if not 1 <= enterprise < 2**32:
            raise ConfigError("syslog: the enterprise number is a positive 32-bit integer")
        self.host, self.port = host, port
        self.server_name = server_name or host
        self.options: dict[str, Any] = {
            "hostname": hostname,
            "app_name": app_name,
            "facility": facility,
            "enterprise": enterprise,
        }
        self.timeout = timeout
        self.accept_wait = accept_wait
        self.context: ssl.SSLContext = tls_context(ca_file)
        if cert_file is not None and key_file is not None:
            load_client_certificate(self.context, cert_file, key_file, where=where)
        elif cert_file is not None or key_file is not None:
            raise ConfigError(f"{where}: cert_file and key_file go together")
        self._socket: ssl.SSLSocket | None = None
        extra: dict[str, Any] = {} if rand is None else {"rand": rand}
        self._worker: Worker[bytes] = Worker(
            f"syslog {host}:{port}",
            self._send,
            max_queue=max_queue,
            backoff=backoff,
            sleep=sleep,
            label=lambda _: "a message",
            finish=self._disconnect,
            **extra,
        )

    def submit(self, alert: Mapping[str, Any]) -> bool:
        """Queue an alert (:func:`format_alert`); False when the queue is full."""
        return self._worker.submit(frame(format_alert(alert, **self.options)))

    def submit_event(self, event: Mapping[str, Any]) -> bool:
        """Queue an OCSF event (:func:`format_event`); False when the queue is full."""
        return self._worker.submit(frame(format_event(event, **self.options)))

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock = self.context.wrap_socket(raw, server_hostname=self.server_name)
        except BaseException:
            raw.close()
            raise
        try:
            if sock.version() == "TLSv1.3":
                self._accepted(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _accepted(self, sock: ssl.SSLSocket) -> None:
        """Wait for the receiver's first record after a TLS 1.3 handshake (module
        docstring); raise an OSError if it refused this client."""
        if not select.select([sock], [], [], self.accept_wait)[0]:
            return  # no ticket: nothing is known, go on
        sock.setblocking(False)
        try:
            sock.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # a session ticket (or part of one): accepted
        finally:
            sock.settimeout(self.timeout)
        raise ConnectionError("the receiver ended the connection after the handshake")

    def _stale(self, sock: ssl.SSLSocket) -> bool:
        """Whether the receiver closed the connection (or sent data: a syslog receiver
        never speaks, so either way start afresh). TLS records that carry no data (a
        TLS 1.3 session ticket) are read and leave the connection as it was."""
        if not sock.pending() and not select.select([sock], [], [], 0)[0]:
            return False
        sock.setblocking(False)
        try:
            sock.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(self.timeout)
        return True  # b"": closed; anything else: not a receiver we understand

    def _send(self, framed: bytes) -> None:
        try:
            if self._socket is not None and self._stale(self._socket):
                self._disconnect()
            if self._socket is None:
                self._socket = self._connect()
            self._socket.sendall(framed)
        except (OSError, ValueError) as exc:
            self._disconnect()
            raise Retry(f"{type(exc).__name__}: {exc}"[:200]) from None

    def _disconnect(self) -> None:
        if self._socket is not None:
            sock, self._socket = self._socket, None
            with contextlib.suppress(OSError):
                sock.close()


def load_syslog(
    declared: SyslogConfig, folder: Path, *, hostname: str, **options: Any
) -> SyslogSender:
    """The sender (not started) a declaration's ``audit.alerts.syslog`` describes, its
    files taken relative to ``folder`` (the declaration's); ``options``: more
    :class:`SyslogSender` arguments."""

    def path(name: str | None) -> str | None:
        return None if name is None else str(folder / name)

    return SyslogSender(
        declared.host,
        declared.port,
        path(declared.ca_file),
        hostname=hostname,
        cert_file=path(declared.cert_file),
        key_file=path(declared.key_file),
        where="audit.alerts.syslog",
        **options,
    )
