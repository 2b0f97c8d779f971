"""Run the audit collector: its ledger (SQLite in the state directory, or PostgreSQL),
the audit key that signs checkpoints (Ed25519, sealed at rest under the state's sealing
key), the detector over the shipped and declared Sigma rules, the alert store, the
responder, the declared alert receivers (``audit.alerts``: signed webhooks, syslog over
TLS), the checkpoint webhook (``audit.checkpoint_webhook``: each signed checkpoint's
line, POSTed signed, so that a copy lives off this machine), the pruning of records past
retention (``audit.retention``: every ``interval``, through the collector's own SQLite
file or, on PostgreSQL, the pruning role's URL — without one, pruning is off and a
warning says so at start), the span store (``audit.tracing``: spans past its
retention removed on a timer, and each newly stored span forwarded to its ``otlp``
receiver if declared), and the HTTP API, served over mTLS with its own SVID
(``spiffe://<td>/trustmesh/audit``).

A workload whose SPIFFE ID is suspended is refused on every route (``403``, a
``suspended-spiffe-id`` event; :mod:`trustmesh.platform.suspensions`) but one: its
deliveries (``POST /v1/events``, and its spans: ``POST /v1/traces``) are still taken,
and nothing more is recorded of them. The events of a suspended workload are what an
investigator needs most, and refusing them would drop events (its spool would hold them
until it gives up)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from trustmesh import crypto, events
from trustmesh.audit.alerts import AlertStore
from trustmesh.audit.anomaly import AnomalyDetector, AnomalySettings
from trustmesh.audit.app import MAX_BODY, audit_app
from trustmesh.audit.behaviour import LocalTime, WorkingHours
from trustmesh.audit.chain import Checkpoint, CheckpointPolicy
from trustmesh.audit.console.graph import EdgeCounts
from trustmesh.audit.console.server import RunningConsole, edge_counts, start_console
from trustmesh.audit.detection import SHIPPED_RULES, Alert, Detector, DetectorSettings
from trustmesh.audit.endpoint import checkpoint_path
from trustmesh.audit.ledger import LAYOUT, Ledger
from trustmesh.audit.otlp_forward import OtlpForwarder, load_forwarder
from trustmesh.audit.response import AdminCaller, Caller, Responder
from trustmesh.audit.response_store import ResponseStore
from trustmesh.audit.retention import Pruner, Retention
from trustmesh.audit.service import AuditService, OnAlerts
from trustmesh.audit.sigma_rules import load_ruleset
from trustmesh.audit.spans import SpanStore
from trustmesh.audit.syslog import SyslogSender, load_syslog
from trustmesh.audit.traces import SpanRetention, Traces
from trustmesh.audit.webhook import WebhookSender, load_webhook
from trustmesh.config import TrustmeshConfig
from trustmesh.config.audit import (
    AuditConfig,
    DetectionConfig,
    RetentionConfig,
    TracingConfig,
    WebhookConfig,
)
from trustmesh.config.listen import listen_url
from trustmesh.errors import ConfigError
from trustmesh.platform.listeners import ASGIApp, Served, bound_socket, start
from trustmesh.platform.suspensions import RefuseSuspended
from trustmesh.reasons import Activity
from trustmesh.sdk import store_tls
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import SVIDSource
from trustmesh.store import create_engine, sqlite_url
from trustmesh.store.shared import component_url

__all__ = ["RunningAudit", "detector_for", "serve_audit"]

_KEY_CONTEXT: Final = b"trustmesh/audit/checkpoint-key"

log = logging.getLogger("trustmesh.audit")


class _Receiver(Protocol):
    def start(self) -> None: ...
    def submit(self, alert: Mapping[str, Any]) -> object: ...
    def close(self, timeout: float = 5.0) -> bool: ...


@dataclass
class RunningAudit:
    service: AuditService
    served: Served
    url: str
    ticker: asyncio.Task[None]
    responder: Responder
    responding: asyncio.Task[None]
    receivers: list[_Receiver] = field(default_factory=list)
    pruner: Pruner | None = None  # None: pruning is off
    pruning: asyncio.Task[None] | None = None
    checkpoints: WebhookSender | None = None  # the checkpoint webhook's
    traces: Traces | None = None
    span_retention: SpanRetention | None = None
    span_pruning: asyncio.Task[None] | None = None
    console: RunningConsole | None = None

    async def stop(self) -> None:
        if self.console is not None:  # no admin reads a log that is closing
            await self.console.stop()
        for task in (self.ticker, self.responding, self.pruning, self.span_pruning):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.served.stop()
        with contextlib.suppress(Exception):  # what it can: the rest waits for the next start
            await self.service.store_own()
        for receiver in self.receivers:  # what they can send in a few seconds
            await asyncio.to_thread(receiver.close, 3.0)
        if self.checkpoints is not None:  # after the last checkpoint store_own made
            await asyncio.to_thread(self.checkpoints.close, 3.0)
        forwarder = None if self.traces is None else self.traces.forwarder
        if forwarder is not None:
            await asyncio.to_thread(forwarder.close, 3.0)
        await self.service.ledger.close()


def _receivers(
    settings: AuditConfig, folder: Path, hostname: str
) -> tuple[WebhookSender | None, SyslogSender | None]:
    """The declared alert receivers (not started)."""
    hooks = [load_webhook(hook, folder) for hook in settings.alerts.webhooks]
    syslog = settings.alerts.syslog
    return (
        WebhookSender(hooks) if hooks else None,
        None if syslog is None else load_syslog(syslog, folder, hostname=hostname),
    )


def _reporting(recorder: events.Recorder) -> Callable[[str, str, str], None]:
    """Record a receiver's give-up as an ``export-failed`` event (the shipped rule
    ``export_failed`` alerts on it)."""

    def report(receiver: str, item: str, why: str) -> None:
        recorder.record(
            Activity.EXPORT_FAILED,
            f"{receiver}: {item} not delivered",
            decision=events.Decision.ERROR,
            attributes={"receiver": receiver[:256], "item": item[:256], "why": why[:512]},
        )

    return report


def _checkpoint_sender(settings: AuditConfig, folder: Path) -> WebhookSender | None:
    """The declared checkpoint webhook's sender (not started): every checkpoint, of any
    level, to the one hook."""
    declared = settings.checkpoint_webhook
    if declared is None:
        return None
    hook = WebhookConfig(
        name="checkpoints",
        url=declared.url,
        secret_file=declared.secret_file,
        ca_file=declared.ca_file,
        min_level="informational",
    )
    return WebhookSender([load_webhook(hook, folder, key="audit.checkpoint_webhook")])


def _posting(sender: WebhookSender) -> Callable[[Checkpoint], None]:
    """Queue a checkpoint on ``sender``: its line (:meth:`Checkpoint.to_line`, without
    the line break) as the body, which is the same canonical JSON."""

    def post(checkpoint: Checkpoint) -> None:
        line = json.loads(checkpoint.to_line())
        sender.submit(line, delivery_id=f"checkpoint-{checkpoint.last_seq}")

    return post


def _span_interval(retention: float) -> float:
    """How often spans past ``retention`` (seconds) are removed: a tenth of it, at
    least every hour and at most every minute."""
    return min(max(retention / 10, 60.0), 3600.0)


def settings_of(config: TrustmeshConfig) -> AuditConfig:
    if config.audit is None:
        raise ConfigError("audit: not declared in the configuration")
    return config.audit


def detector_for(detection: DetectionConfig, config_dir: Path | None) -> Detector:
    """The detector the declaration asks for: the shipped rules (unless turned off) and
    the declared files or folders, relative to the declaration's folder."""
    hours = WorkingHours(
        timezone=detection.timezone,
        days=frozenset(detection.working_days),
        start=detection.working_hours[0],
        end=detection.working_hours[1],
    )
    base = config_dir or Path.cwd()
    paths: list[str | Path] = [SHIPPED_RULES] if detection.shipped_rules else []
    paths += [base / rule for rule in detection.rules]
    settings = DetectorSettings(working_hours=hours, dry_run=detection.dry_run)
    declared = detection.anomaly
    anomalies = (
        AnomalyDetector(
            AnomalySettings(
                window_ms=int(declared.window.total_seconds() * 1000),
                learning_ms=int(declared.learning.total_seconds() * 1000),
                threshold=declared.threshold,
                rate_factor=declared.rate_factor,
                min_requests=declared.min_requests,
                stuffing_accounts=declared.stuffing_accounts,
                level=declared.level,
            )
        )
        if declared.enabled
        else None
    )
    return Detector(load_ruleset(paths, LocalTime(hours)), settings, anomalies=anomalies)


def _paths(
    settings: AuditConfig, state: Path, config: TrustmeshConfig | None = None
) -> tuple[Path, str, Path]:
    """The collector's folder, the database URL (its own, its role in the shared one,
    or SQLite) and the checkpoint file."""
    folder = state.absolute() / "audit"
    shared = component_url(config, state, "audit") if config is not None else None
    url = settings.database or shared or sqlite_url(folder / "audit.db")
    file = settings.checkpoint_file
    return folder, url, Path(file) if file else checkpoint_path(state.absolute())


def retention_of(settings: RetentionConfig) -> Retention:
    return Retention(default=settings.default, classes=dict(settings.classes))


def prune_engine(
    settings: AuditConfig, url: str, engine: AsyncEngine, shared: str | None = None
) -> AsyncEngine | None:
    """The connection that may delete records (the collector's own on SQLite, the
    pruning role's on PostgreSQL: declared, or ``shared``, its role in the shared
    database); None, with a warning, when retention is declared and there is none —
    never silently off."""
    if not retention_of(settings.retention).enabled:
        return None
    if url.startswith("sqlite"):
        return engine
    pruner = settings.retention.database or shared
    if pruner is not None:
        return create_engine(pruner, tls=store_tls.postgres)
    log.warning(
        "audit: retention is declared but pruning is off: on PostgreSQL the collector's "
        "role may not DELETE; set audit.retention.database to the URL of a role given "
        "prune_grants (trustmesh.audit.ledger_schema)"
    )
    return None


async def serve_audit(
    config: TrustmeshConfig,
    state: Path,
    *,
    source: SVIDSource,
    sink: events.EventSink,
    host: str | None = None,
    port: int | None = None,
    clock: Callable[[], float] = time.time,
    config_file: Path | None = None,
    on_alerts: OnAlerts | None = None,
    tick: float = 0.25,
    caller: Caller | None = None,
    suspended: Container[str] | None = None,
    forwarding: Mapping[str, Any] | None = None,
) -> RunningAudit:
    """Start the collector; return once it listens. ``host``, ``port``: the declaration's
    (``listen.host``, where the console listens too; ``audit.port``) unless given;
    ``suspended``: the SPIFFE IDs refused everywhere but the ingest (the suspensions
    feed); ``forwarding``: the OTLP forwarder's options (:class:`OtlpForwarder`)."""
    settings = settings_of(config)
    detector = detector_for(config.detection, config_file.parent if config_file else None)
    ledger, folder = _open_ledger(config, settings, state)
    host = config.listen.host if host is None else host
    sock = bound_socket(host, port if port is not None else settings.port)
    try:
        service = await _open_service(config, state, ledger, detector, on_alerts, clock)
        declared_in = config_file.parent if config_file else Path.cwd()
        recorder, responder, receivers, copies = await _responding(
            config, service, sink, source, folder, declared_in, caller, clock
        )
        traces = await _traces(settings.tracing, service, recorder, declared_in, forwarding)
        edges = edge_counts(config, service) if settings.console is not None else None
        pruner = _pruner(settings, service, recorder)
        running = await _serve(
            config,
            service,
            responder,
            source,
            host,
            sock,
            tick,
            receivers,
            pruner,
            suspended,
            traces,
        )
        _keep_spans(running, traces, settings.tracing, clock)
        _keep_pruning(running, pruner, settings.retention)
        if edges is not None:
            shown, where = (traces, edges), (state, declared_in, host)
            seen = events.FanoutSink(sink, service.own)
            running.console = await _console_or_stop(running, config, shown, source, seen, where)
        _keep_copies(running, copies)
        return running
    except BaseException:
        sock.close()
        await ledger.close()
        raise


def _keep_copies(running: RunningAudit, copies: WebhookSender | None) -> None:
    """The checkpoint copies sent from now on, where declared."""
    if copies is not None:
        copies.start()
        running.checkpoints = copies


def _open_ledger(
    config: TrustmeshConfig, settings: AuditConfig, state: Path
) -> tuple[Ledger, Path]:
    """The log (not opened yet) and the folder of the collector's state."""
    folder, url, checkpoints = _paths(settings, state, config)
    engine = create_engine(url, sqlite_layout=LAYOUT, tls=store_tls.postgres)
    pruner = None if settings.database else component_url(config, state, "audit_pruner")
    pruning = prune_engine(settings, url, engine, pruner)
    return Ledger(engine, checkpoint_file=checkpoints, prune_engine=pruning), folder


def _pruner(
    settings: AuditConfig, service: AuditService, recorder: events.Recorder
) -> Pruner | None:
    """Retention's pruner, where the log is pruned by a role of its own (PostgreSQL)."""
    ledger = service.ledger
    if ledger.prune_engine is None:
        return None
    return Pruner(ledger, service.key, retention_of(settings.retention), recorder, service.now)


def _keep_pruning(running: RunningAudit, pruner: Pruner | None, retention: RetentionConfig) -> None:
    if pruner is not None:
        interval = retention.interval.total_seconds()
        running.pruning = asyncio.create_task(pruner.run(interval))


async def _responding(
    config: TrustmeshConfig,
    service: AuditService,
    sink: events.EventSink,
    source: SVIDSource,
    folder: Path,
    declared_in: Path,
    caller: Caller | None,
    clock: Callable[[], float],
) -> tuple[events.Recorder, Responder, list[_Receiver], WebhookSender | None]:
    """The collector's recorder (its log and its own chain), the responder that takes the
    rules' actions, the alert receivers and the checkpoint copies (each not started yet;
    each give-up of theirs recorded)."""
    settings = settings_of(config)
    responses = ResponseStore(service.ledger.engine)
    await responses.create()
    webhooks, syslog = _receivers(settings, declared_in, socket.gethostname())
    copies = _checkpoint_sender(settings, declared_in)
    if copies is not None:  # queued until it starts, with the collector
        service.on_checkpoint = _posting(copies)
    recorder = events.Recorder(
        events.FanoutSink(sink, service.own), component="audit", spiffe_id=service.spiffe_id
    )
    responder = Responder(
        responses,
        caller or AdminCaller(RotatingTLS(source), folder.parent, config.trust_domain),
        recorder,
        never_block=config.detection.never_block,
        clock=clock,
    )
    receivers: list[_Receiver] = [r for r in (webhooks, syslog) if r is not None]
    for sender in (webhooks, syslog, copies):
        if sender is not None:
            sender.notify(_reporting(recorder))
    return recorder, responder, receivers, copies


async def _console_or_stop(
    running: RunningAudit,
    config: TrustmeshConfig,
    shown: tuple[Traces, EdgeCounts],
    source: SVIDSource,
    sink: events.EventSink,
    where: tuple[Path, Path, str],
) -> RunningConsole:
    """The console started beside the collector, on the address it bound (``where``: the
    state directory, the declaration's folder, that address), or the collector stopped
    (the caller's failure path only closes what it opened before serving)."""
    settings = settings_of(config).console
    if settings is None:
        raise ConfigError("audit.console is not declared")
    state, declared_in, host = where
    traces, edges = shown
    try:
        return await start_console(
            config,
            settings,
            state,
            service=running.service,
            spans=traces.store,
            edges=edges,
            tls=RotatingTLS(source),
            sink=sink,
            declared_in=declared_in,
            host=host,
        )
    except BaseException:
        await running.stop()
        raise


async def _traces(
    tracing: TracingConfig,
    service: AuditService,
    recorder: events.Recorder,
    declared_in: Path,
    forwarding: Mapping[str, Any] | None,
) -> Traces:
    """The span store (made where missing) and its endpoints, with the OTLP forwarder
    when one is declared (not started yet), each give-up of which is recorded."""
    store = SpanStore(service.ledger.engine)
    await store.create()
    forwarder: OtlpForwarder | None = None
    if tracing.otlp is not None:
        forwarder = load_forwarder(tracing.otlp, declared_in, **(forwarding or {}))
        forwarder.notify(_reporting(recorder))
    return Traces(store, service, recorder, max_body=MAX_BODY, forwarder=forwarder)


def _keep_spans(
    running: RunningAudit, traces: Traces, tracing: TracingConfig, clock: Callable[[], float]
) -> None:
    """Spans past ``tracing.retention`` pruned on a timer; the forwarder started."""
    running.span_retention = SpanRetention(traces.store, tracing.retention, clock)
    running.span_pruning = asyncio.create_task(
        running.span_retention.run(_span_interval(tracing.retention.total_seconds()))
    )
    if traces.forwarder is not None:
        traces.forwarder.start()


async def _open_service(
    config: TrustmeshConfig,
    state: Path,
    ledger: Ledger,
    detector: Detector,
    on_alerts: OnAlerts | None,
    clock: Callable[[], float],
) -> AuditService:
    """The ledger's tables made, the audit key (sealed under the state's sealing key),
    the checkpoint policy and the alert store: the service over them."""
    settings = settings_of(config)
    await ledger.create()
    key = crypto.load_or_create_signing_key(
        _paths(settings, state)[0] / "checkpoint-key.sealed",
        crypto.load_seal_key(state, dev=config.dev),
        context=_KEY_CONTEXT,
    )
    policy = CheckpointPolicy(
        records=settings.checkpoint_every,
        seconds=settings.checkpoint_interval.total_seconds(),
    )
    alerts = AlertStore(ledger.engine)
    await alerts.create()
    return AuditService(
        ledger,
        key,
        detector,
        policy,
        on_alerts=on_alerts,
        clock=clock,
        spiffe_id=config.component_spiffe_id("audit"),
        alert_store=alerts,
    )


def _ingest(method: str, path: str) -> bool:
    """A delivery of events or spans, taken from a suspended workload too."""
    return method == "POST" and path in ("/v1/events", "/v1/traces")


async def _serve(
    config: TrustmeshConfig,
    service: AuditService,
    responder: Responder,
    source: SVIDSource,
    host: str,
    sock: socket.socket,
    tick: float,
    receivers: list[_Receiver],
    pruner: Pruner | None = None,
    suspended: Container[str] | None = None,
    traces: Traces | None = None,
) -> RunningAudit:
    operator = config.component_spiffe_id("operator")
    app: ASGIApp = audit_app(service, responder.recorder, operator, responder, pruner, traces)
    if suspended is not None:
        app = RefuseSuspended(app, suspended, responder.recorder, exempt=_ingest)
    outer = service.on_alerts

    async def on_alerts(alerts: list[Alert]) -> None:
        responder.submit(alerts)
        for receiver in receivers:  # each queues, never waits on its receiver
            for alert in alerts:
                receiver.submit(alert.to_dict())
        if outer is not None:
            await outer(alerts)

    service.on_alerts = on_alerts
    replayed = await service.warm_start(config.detection.warm_start)
    if replayed:
        log.info("audit: detection warmed with %d recent events", replayed)
    port = int(sock.getsockname()[1])
    served = await start(app, host=host, port=port, tls=RotatingTLS(source), sock=sock)
    for receiver in receivers:
        receiver.start()
    ticker = asyncio.create_task(service.run(tick))
    responding = asyncio.create_task(responder.run())
    return RunningAudit(
        service,
        served,
        listen_url(host, port),
        ticker,
        responder,
        responding,
        receivers,
        pruner,
        traces=traces,
    )
