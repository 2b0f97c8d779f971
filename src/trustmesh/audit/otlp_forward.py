"""Spans forwarded to an OTLP/HTTP receiver (``audit.tracing.otlp``: an OpenTelemetry
Collector, Jaeger, Tempo): each request's newly stored spans, as one
``ExportTraceServiceRequest`` (:func:`~trustmesh.audit.otlp.narrowed`; the resource
names the reporter), ``POST <url>/v1/traces`` with ``Content-Type:
application/x-protobuf``.

On the alert senders' machinery (:mod:`trustmesh.audit._delivery`): a bounded queue
drained by one thread, so the collector's event loop never waits on the receiver (a
full queue drops the request, counted); https verified against ``ca_file`` or the
system's roots, a client certificate when declared; plain http only to loopback (the
declaration refuses anything else, and so does :class:`OtlpForwarder`).

Which answers are retried is OTLP's rule, not the webhooks'
(https://opentelemetry.io/docs/specs/otlp/#retryable-response-codes): ``429``, ``502``,
``503`` and ``504`` — and a network error — with exponential backoff, full jitter and at
least the ``Retry-After``; any other status is given up at once ("All other 4xx or 5xx
response status codes MUST NOT be retried"). A give-up is logged and reported through
:meth:`OtlpForwarder.notify` (the collector records an ``export-failed`` event); the
spans stay in the collector's store.
"""

from __future__ import annotations

import http.client
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from trustmesh.audit._delivery import (
    Backoff,
    GiveUp,
    OneWorker,
    Retry,
    Worker,
    load_client_certificate,
    post,
    tls_context,
)
from trustmesh.config.audit import OtlpConfig
from trustmesh.errors import ConfigError

__all__ = ["RETRYABLE", "OtlpForwarder", "load_forwarder"]

#: The statuses OTLP/HTTP says to retry.
RETRYABLE: Final = frozenset({429, 502, 503, 504})
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


@dataclass(frozen=True)
class _Item:
    body: bytes
    spans: int


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OtlpForwarder(OneWorker[_Item]):
    """Forwards serialized ``ExportTraceServiceRequest`` bodies to ``url`` + ``/v1/traces``
    in the background (module docstring). ``sleep``, ``rand`` and ``backoff``: the waits
    between attempts (tests pass their own)."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        max_queue: int = 1000,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        parts = urlsplit(url.rstrip("/") + "/v1/traces")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError("audit.tracing.otlp.url: not a valid URL") from None
        if parts.username is not None or parts.password is not None or not parts.hostname:
            raise ConfigError("audit.tracing.otlp.url: a host, and no credentials")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ConfigError("audit.tracing.otlp.url: plain http only to a loopback address")
        if parts.scheme not in ("http", "https"):
            raise ConfigError("audit.tracing.otlp.url: https, or http to loopback")
        self.url = parts
        self.timeout = timeout
        self.context = None
        if parts.scheme == "https":
            self.context = tls_context(ca_file)
            if cert_file is not None and key_file is not None:
                load_client_certificate(
                    self.context, cert_file, key_file, where="audit.tracing.otlp"
                )
        self._connection: http.client.HTTPConnection | None = None
        extra: dict[str, Any] = {} if rand is None else {"rand": rand}
        self._worker: Worker[_Item] = Worker(
            "otlp",
            self._deliver,
            max_queue=max_queue,
            backoff=backoff,
            sleep=sleep,
            label=lambda item: f"{item.spans} spans",
            finish=self._finish,
            **extra,
        )

    def submit(self, body: bytes, spans: int) -> bool:
        """Queue one serialized request of ``spans`` spans; never blocks (False: dropped)."""
        return self._worker.submit(_Item(body, spans))

    def _deliver(self, item: _Item) -> None:
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "trustmesh-audit"}
        answer, self._connection = post(
            self.url,
            item.body,
            headers,
            context=self.context,
            timeout=self.timeout,
            connection=self._connection,
        )
        if 200 <= answer.status < 300:
            return
        if answer.status in RETRYABLE:
            raise Retry(f"HTTP {answer.status}", after=answer.retry_after)
        raise GiveUp(f"HTTP {answer.status}")

    def _finish(self) -> None:
        if self._connection is not None:
            self._connection.close()


def load_forwarder(config: OtlpConfig, folder: Path, **options: Any) -> OtlpForwarder:
    """The forwarder ``audit.tracing.otlp`` declares (not started); files relative to
    ``folder`` (the declaration's)."""

    def at(name: str | None) -> str | None:
        return None if name is None else str(folder / name)

    return OtlpForwarder(
        config.url,
        ca_file=at(config.ca_file),
        cert_file=at(config.cert_file),
        key_file=at(config.key_file),
        **options,
    )
