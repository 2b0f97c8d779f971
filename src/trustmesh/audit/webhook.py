"""Alerts POSTed as JSON to the operator's webhooks, signed so a receiver can tell they
came from this collector and were not replayed.

Each request carries::

    Content-Type: application/json
    X-Trustmesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    X-Trustmesh-Delivery: <the alert's uid>   (the same on every retry: dedupe on it)

(the scheme of Stripe's webhooks: the timestamp is signed with the body, so a receiver
refuses a replay older than its tolerance — :func:`verify_signature`, which compares in
constant time). Each attempt is signed anew, with its own time.

Only ``https://`` URLs: an alert names the addresses and users it is about, and the
signature proves origin, not secrecy. There is no plain-HTTP exception for loopback
(the tests run a real HTTPS receiver); ``ca_file`` trusts a private CA instead of the
system's roots. No redirect is followed; credentials in the URL are refused (they
would end up in logs).

Delivery (:class:`WebhookSender`, on :mod:`trustmesh.audit._delivery`): one bounded
queue and thread per hook, so a slow receiver delays only its own alerts; 2xx is
delivered; a network error, a 5xx, or a 4xx that says who asks or when (``401``,
``403`` — the hook's secret or its authorization being changed —, ``408``, ``429``…:
:func:`~trustmesh.audit._delivery.retryable`) is retried with exponential backoff and
jitter (at least the Retry-After), up to the backoff's attempts; any other status is
given up at once. Either way a give-up is logged with the hook's name and the alert's
uid, and recorded as an ``export-failed`` event (the alert itself stays in the alert
store).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from trustmesh.audit._delivery import (
    Backoff,
    DeliveryStats,
    GiveUp,
    Retry,
    Worker,
    post,
    read_private_file,
    retryable,
    tls_context,
)
from trustmesh.audit.alerts import LEVELS
from trustmesh.config.audit import WebhookConfig
from trustmesh.errors import ConfigError, UsageError

__all__ = [
    "MIN_SECRET_BYTES",
    "SIGNATURE_HEADER",
    "Webhook",
    "WebhookSender",
    "load_webhook",
    "sign",
    "verify_signature",
]

#: The header that carries the signature.
SIGNATURE_HEADER: Final = "X-Trustmesh-Signature"
#: The shortest secret a webhook may have.
MIN_SECRET_BYTES: Final = 16
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Webhook:
    """One receiver: alerts of ``min_level`` or above are POSTed to ``url`` (https),
    signed with ``secret`` (at least 16 bytes; never shown in a repr)."""

    name: str
    url: str
    secret: bytes = field(repr=False)
    ca_file: str | None = None
    min_level: str = "low"

    def __post_init__(self) -> None:
        where = f"webhook {self.name[:64]!r}"
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: a name is 1 to 64 of a-z, 0-9, '_' and '-'")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{where}: url is not a valid URL") from None
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"{where}: url must be https://host[:port]/path")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{where}: url must not carry credentials")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"{where}: the secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.min_level not in LEVELS:
            raise ConfigError(f"{where}: min_level is one of {', '.join(LEVELS)}")

    def wants(self, level: str) -> bool:
        """Whether an alert of ``level`` goes to this hook (an unknown level counts as
        informational)."""
        rank = LEVELS.index(level) if level in LEVELS else 0
        return rank >= LEVELS.index(self.min_level)


def load_webhook(config: WebhookConfig, folder: Path, *, key: str | None = None) -> Webhook:
    """The :class:`Webhook` a declaration's ``audit.alerts.webhooks`` entry describes:
    its secret read from ``secret_file`` (trailing line breaks dropped), which must be
    a regular file no one but its owner may read or write; relative paths are taken
    from ``folder`` (the declaration's). ``key``: the entry's key path in messages, for
    a hook declared elsewhere (``audit.checkpoint_webhook``)."""
    path = folder / config.secret_file
    where = f"{path}: {key or f'audit.alerts.webhooks[{config.name}]'}.secret_file"
    secret = read_private_file(path, where).rstrip(b"\r\n")
    ca_file = None if config.ca_file is None else str(folder / config.ca_file)
    return Webhook(config.name, config.url, secret, ca_file, config.min_level)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value for ``body`` sent at ``timestamp`` (unix s)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now: datetime, tolerance: int = 300
) -> bool:
    """For a receiver: whether ``header`` signs ``body`` with ``secret`` at a time within
    ``tolerance`` seconds of ``now`` (either way). Several ``v1`` (while a secret is
    rotated) are accepted if one matches; each is compared in constant time. ``now``
    must be timezone-aware."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageError("now must be timezone-aware")
    if len(header) > 1024:
        return False
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            if len(value) > 12:
                return False
            timestamp = int(value)
        elif key == "v1" and _HEX.fullmatch(value):
            macs.append(value)
    if timestamp is None or not macs or abs(now.timestamp() - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    found = False
    for mac in macs:  # no early exit: every candidate is compared
        found |= hmac.compare_digest(mac, expected)
    return found


@dataclass(frozen=True)
class _Item:
    uid: str
    body: bytes


class WebhookSender:
    """Delivers alerts to ``hooks`` in the background (module docstring). ``clock``:
    unix seconds, for the signature's timestamp; ``sleep`` and ``rand``: the waits
    between attempts and their jitter (tests pass their own: no real waiting)."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] | None = None,
        backoff: Backoff | None = None,
        max_queue: int = 1000,
        timeout: float = 10.0,
    ) -> None:
        names = [h.name for h in hooks]
        if len(set(names)) != len(names):
            raise ConfigError("webhooks: each name once")
        self.hooks = tuple(hooks)
        self.clock = clock
        self.timeout = timeout
        self._workers: dict[str, tuple[Webhook, Worker[_Item]]] = {}
        for hook in hooks:
            extra: dict[str, Any] = {} if rand is None else {"rand": rand}
            poster = self._deliverer(hook)
            worker: Worker[_Item] = Worker(
                f"webhook {hook.name}",
                poster,
                finish=poster.close,
                max_queue=max_queue,
                backoff=backoff,
                sleep=sleep,
                label=lambda item: f"alert {item.uid}",
                **extra,
            )
            self._workers[hook.name] = (hook, worker)

    @property
    def stats(self) -> dict[str, DeliveryStats]:
        """Per hook: submitted, delivered, dropped (queue full), failed, retries."""
        return {name: worker.stats for name, (_, worker) in self._workers.items()}

    def notify(self, on_failed: Callable[[str, str, str], None]) -> None:
        """Call ``on_failed(receiver, item, why)`` at each give-up (any hook)."""
        for _, worker in self._workers.values():
            worker.on_failed = on_failed

    def start(self) -> None:
        for _, worker in self._workers.values():
            worker.start()

    def submit(self, alert: Mapping[str, Any], *, delivery_id: str | None = None) -> int:
        """Queue ``alert`` (an ``Alert.to_dict()`` or ``StoredAlert.to_dict()``) for
        every hook that wants its level; how many queued it. Never blocks.
        ``X-Trustmesh-Delivery`` is ``delivery_id``, else the alert's uid: the same on
        every retry, for receivers to drop a repeat by."""
        body = json.dumps(alert, sort_keys=True, separators=(",", ":"), default=str).encode()
        item = _Item((delivery_id or str(alert.get("uid", "")))[:64], body)
        level = str(alert.get("level", ""))
        return sum(
            worker.submit(item) for hook, worker in self._workers.values() if hook.wants(level)
        )

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued for at most ``timeout`` seconds in all, then stop;
        True when every hook's queue was emptied."""
        deadline = time.monotonic() + timeout
        done = True
        for _, worker in self._workers.values():
            done &= worker.close(max(0.0, deadline - time.monotonic()))
        return done

    def _deliverer(self, hook: Webhook) -> _Poster:
        return _Poster(hook, self.clock, self.timeout)


class _Poster:
    """One hook's deliveries, on its worker's thread (the only user of the connection,
    kept alive between alerts)."""

    def __init__(self, hook: Webhook, clock: Callable[[], float], timeout: float) -> None:
        self.hook = hook
        self.url = urlsplit(hook.url)
        self.context = tls_context(hook.ca_file)
        self.clock = clock
        self.timeout = timeout
        self.connection: http.client.HTTPConnection | None = None

    def __call__(self, item: _Item) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "trustmesh-audit",
            SIGNATURE_HEADER: sign(self.hook.secret, int(self.clock()), item.body),
            "X-Trustmesh-Delivery": item.uid,
        }
        answer, self.connection = post(
            self.url,
            item.body,
            headers,
            context=self.context,
            timeout=self.timeout,
            connection=self.connection,
        )
        if 200 <= answer.status < 300:
            return
        if retryable(answer.status):
            raise Retry(f"HTTP {answer.status}", after=answer.retry_after)
        raise GiveUp(f"HTTP {answer.status}")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
