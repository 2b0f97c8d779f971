"""What the alert senders share (:mod:`~trustmesh.audit.webhook`,
:mod:`~trustmesh.audit.syslog`, :mod:`~trustmesh.audit.export`): a bounded queue drained
by one background thread that retries with exponential backoff and full jitter, and a
small HTTP POST over a TLS context of the sender's own.

The collector's event loop never waits on a receiver: :meth:`Worker.submit` only puts
the item in the queue (a full queue refuses it, and counts the drop). The thread
delivers items one at a time, in order; an item whose delivery raises :class:`Retry`
is tried again after ``min(cap, base * factor ** (attempt - 1))`` times a uniform
random factor (AWS's "full jitter"), at most ``attempts`` times in all, then given up
and logged (the item's label, never its content). :class:`GiveUp` gives up at once (a
receiver that refuses the request: retrying changes nothing). Each give-up is also
passed to :attr:`Worker.on_failed` (the collector records it as an ``export-failed``
event, which the shipped rule alerts on). So no item holds the queue for longer than
its attempts, and none is given up silently; what was given up is still in the
collector (the alert store, the checkpoint file).

A sender's TLS context (:func:`tls_context`) verifies the receiver as the system's
defaults do, against the roots given; :func:`load_client_certificate` adds the
certificate it presents to a receiver that asks for one (mutual TLS). A key or a secret
is read only from a file no one but its owner may read or write
(:func:`read_private_file`).

Which HTTP answers are worth another attempt (:func:`retryable`): a 5xx, and the 4xx
that say who asks or when rather than what was sent — ``401``/``403`` (a token or an
authorization being changed on the receiver's side), ``407``, ``408``, ``421``,
``425``, ``429``. Any other 4xx (``400``, ``404``, ``413``, ``422``…) refuses the
request itself: given up at once.
"""

from __future__ import annotations

import http.client
import logging
import os
import queue
import secrets
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar
from urllib.parse import SplitResult

from trustmesh.errors import ConfigError

__all__ = [
    "TRANSIENT_STATUSES",
    "Backoff",
    "DeliveryStats",
    "GiveUp",
    "OneWorker",
    "Response",
    "Retry",
    "Worker",
    "load_client_certificate",
    "post",
    "read_private_file",
    "retryable",
    "tls_context",
]

log = logging.getLogger("trustmesh.audit.delivery")

T = TypeVar("T")
_random = secrets.SystemRandom()
_STOP: Final = object()
#: The 4xx answers that say who asks or when, not what was sent: worth another attempt.
TRANSIENT_STATUSES: Final = frozenset({401, 403, 407, 408, 421, 425, 429})


def retryable(status: int) -> bool:
    """Whether an HTTP answer ``status`` (not 2xx) is worth another attempt (a 5xx, or
    :data:`TRANSIENT_STATUSES`)."""
    return status >= 500 or status in TRANSIENT_STATUSES


#: The most of a response body read (and thrown away) to keep the connection usable.
_MAX_RESPONSE = 64 * 1024


class Retry(Exception):
    """A delivery failed in a way another attempt may fix (network error, 5xx, 429).
    ``after``: the receiver's own minimum wait (Retry-After), in seconds."""

    def __init__(self, why: str, *, after: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.after = after


class GiveUp(Exception):
    """A delivery failed in a way no retry fixes (the receiver refused it: 4xx)."""


@dataclass(frozen=True)
class Backoff:
    """Attempts and waits: the n-th retry waits ``uniform(0, min(cap, base * factor **
    (n - 1)))`` seconds (at least a Retry-After, capped at ``cap``)."""

    attempts: int = 6
    base: float = 0.5
    factor: float = 2.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 100 or self.base < 0 or self.factor < 1 or self.cap < 0:
            raise ConfigError("backoff: 1 to 100 attempts, base >= 0, factor >= 1, cap >= 0")

    def delay(self, retry: int, rand: Callable[[], float], after: float | None = None) -> float:
        """How long to wait before retry number ``retry`` (1, 2, …)."""
        ceiling = min(self.cap, self.base * self.factor ** (retry - 1))
        wait = rand() * ceiling
        if after is not None:
            wait = max(wait, min(after, self.cap))
        return wait


@dataclass
class DeliveryStats:
    """What a worker did so far (read from any thread: plain integers)."""

    submitted: int = 0
    delivered: int = 0
    dropped: int = 0  # refused by a full queue, or left in it at close
    failed: int = 0  # given up (attempts exhausted, or refused by the receiver)
    retries: int = 0


class Worker(Generic[T]):
    """A queue of at most ``max_queue`` items delivered by ``deliver`` on a thread of
    its own (module docstring), then ``finish`` on that thread (to close a
    connection). ``sleep``: how the thread waits between attempts
    (default: a wait that :meth:`close` cuts short once its timeout has passed);
    ``rand``: the jitter's uniform [0, 1) source; ``label``: what a log line names an
    item by."""

    def __init__(
        self,
        name: str,
        deliver: Callable[[T], None],
        *,
        max_queue: int = 1000,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] = _random.random,
        label: Callable[[T], str] = lambda _: "an item",
        finish: Callable[[], None] = lambda: None,
    ) -> None:
        if max_queue < 1:
            raise ConfigError(f"{name}: the queue holds at least 1 item")
        self.name = name
        self.deliver = deliver
        self.backoff = backoff or Backoff()
        self.rand = rand
        self.label = label
        self.finish = finish
        self.stats = DeliveryStats()
        self._counting = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._abort = threading.Event()
        self._sleep = sleep or self._abort.wait
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Called on the worker's thread with (its name, the item's label, why) at each
        #: give-up; it must not block.
        self.on_failed: Callable[[str, str, str], None] | None = None

    def _count(self, name: str, n: int = 1) -> None:
        with self._counting:  # the caller's thread and the worker's both count
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"audit-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> bool:
        """Queue ``item``; False (counted as dropped) when the queue is full or closed.
        Never blocks."""
        if self._closed:
            self._count("dropped")
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count("dropped")
            return False
        self._count("submitted")
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Refuse new items, deliver those queued for at most ``timeout`` seconds, then
        stop (an item still queued is dropped, a retry in progress given up). True when
        everything queued was delivered or given up."""
        self._closed = True
        if self._thread is None:
            self._count("dropped", self._queue.qsize())
            return self._queue.empty()
        deadline = time.monotonic() + timeout
        while True:  # the stop marker goes last, whatever the queue holds
            try:
                self._queue.put(_STOP, timeout=max(deadline - time.monotonic(), 0.01))
                break
            except queue.Full:  # the time is up with the queue still full
                self._abort.set()
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            self._abort.set()  # cuts a wait between attempts short; no retry follows
            self._thread.join(1.0)
        drained = not self._abort.is_set()
        self._thread = None
        return drained

    def _run(self) -> None:
        try:
            self._drain()
        finally:
            self.finish()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._abort.is_set():
                self._count("dropped")
                continue
            self._attempt(item)  # type: ignore[arg-type]

    def _attempt(self, item: T) -> None:
        for attempt in range(1, self.backoff.attempts + 1):
            try:
                self.deliver(item)
            except Retry as exc:
                if attempt == self.backoff.attempts or self._abort.is_set():
                    why = f"{exc.why} (after {attempt} attempts)"
                    break
                self._count("retries")
                self._sleep(self.backoff.delay(attempt, self.rand, exc.after))
                if self._abort.is_set():  # closed while waiting: no further attempt
                    why = f"{exc.why}; closed before the next attempt"
                    break
                continue
            except GiveUp as exc:
                self._failed(item, f"refused: {exc}")
                return
            except Exception:  # a bug in a sender: logged, and the thread goes on
                log.exception("audit %s: delivering %s failed", self.name, self.label(item))
                self._failed(item, "the sender failed")
                return
            self._count("delivered")
            return
        self._failed(item, why)

    def _failed(self, item: T, why: str) -> None:
        self._count("failed")
        label = self.label(item)
        log.warning("audit %s: gave up on %s: %s", self.name, label, why)
        if self.on_failed is not None:
            try:
                self.on_failed(self.name, label, why)
            except Exception:  # reporting must not stop the deliveries that follow
                log.exception("audit %s: reporting a give-up failed", self.name)


class OneWorker(Generic[T]):
    """A sender with one queue and one thread (``_worker``, made by the subclass): its
    counts, who is told of each give-up, its start, and its close (what is queued is
    sent for at most ``timeout`` seconds; True when all of it was)."""

    _worker: Worker[T]

    @property
    def stats(self) -> DeliveryStats:
        return self._worker.stats

    def notify(self, on_failed: Callable[[str, str, str], None]) -> None:
        """Call ``on_failed(receiver, item, why)`` at each give-up."""
        self._worker.on_failed = on_failed

    def start(self) -> None:
        self._worker.start()

    def close(self, timeout: float = 5.0) -> bool:
        return self._worker.close(timeout)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name, TLS 1.2 at
    least: against ``ca_file`` when given (a private CA), else the system's roots."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{ca_file}: not a readable PEM file of CA certificates ({exc})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def read_private_file(path: Path, where: str) -> bytes:
    """The bytes of ``path``, refused with a :class:`ConfigError` that starts with
    ``where`` unless it is a regular file no one but its owner may read or write
    (``mode & 0o077 == 0``). The checks are made on the file opened, so it cannot be
    swapped between them and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{where}: others may read or write it "
                f"(mode {stat.S_IMODE(info.st_mode):04o}; chmod 600 it)"
            )
        try:
            return file.read()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt for a passphrase on the terminal.
    raise ConfigError("an encrypted key")


def load_client_certificate(
    context: ssl.SSLContext, cert_file: str, key_file: str, *, where: str
) -> None:
    """Have ``context`` present the chain in ``cert_file`` (PEM: the certificate, then
    any intermediates) with its key ``key_file`` (PEM, unencrypted, in a file no one but
    its owner may read or write) to a server that asks for a client certificate. Each
    problem — a file missing or unreadable, the key readable by others, not PEM, an
    encrypted key, a key that is not the certificate's — is a :class:`ConfigError`
    naming the file and the setting (``where``, the settings' key path)."""
    at_cert, at_key = f"{cert_file}: {where}.cert_file", f"{key_file}: {where}.key_file"
    read_private_file(Path(key_file), at_key)
    try:  # parsed alone first, so that a problem is put on the right file
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except OSError as exc:
        problem = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
        raise ConfigError(f"{at_cert}: not a readable PEM certificate chain ({problem})") from None
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except ConfigError:
        raise ConfigError(f"{at_key}: an encrypted key (expected an unencrypted one)") from None
    except OSError as exc:
        if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{at_key}: not the key of the certificate in {cert_file}") from None
        problem = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
        raise ConfigError(f"{at_key}: not a readable PEM private key ({problem})") from None


@dataclass(frozen=True)
class Response:
    status: int
    retry_after: float | None


def post(
    url: SplitResult,
    body: bytes,
    headers: dict[str, str],
    *,
    context: ssl.SSLContext | None,
    timeout: float,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[Response, http.client.HTTPConnection]:
    """POST ``body`` to ``url`` (https with ``context``; http only where the caller
    allows it) on ``connection`` (kept alive between calls; a new one when None); the
    status, the Retry-After in seconds, and the connection for the next call. Network
    and TLS errors raise :class:`Retry` (the connection is closed)."""
    host, port = url.hostname or "", url.port
    if connection is None:
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read(_MAX_RESPONSE)
        retry_after = answer.getheader("Retry-After")
        if answer.will_close or not answer.isclosed():  # or a body longer than we read
            connection.close()  # the next request opens a new one
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise Retry(f"{type(exc).__name__}: {exc}"[:200]) from None
    after = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
    return Response(answer.status, after), connection
