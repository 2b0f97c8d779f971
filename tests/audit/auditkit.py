"""Events shaped exactly as each component records them (the same Recorder, component
name, shape default, reason, message and attributes as the component's code), rule
files, and a detector with the time it has reached."""

from __future__ import annotations

import contextlib
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trustmesh import events
from trustmesh.audit.detection import Alert, Detector, DetectorSettings
from trustmesh.reasons import Activity, Code, Reason

TD = "trustmesh.local"
#: Monday 5 January 2026, 12:00 UTC: inside the default working hours.
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
_TICKET: events.Shape = (events.EventClass.AUTHENTICATION, 4, "Service Ticket Request")


def spiffe(name: str) -> str:
    return f"spiffe://{TD}/{name}"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _one(recorder: events.Recorder, code: Code, message: str, **fields: Any) -> dict[str, Any]:
    return recorder.record(code, message, **fields).to_ocsf()


def _component_event(
    component: str, activity: Activity, message: str, attributes: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """What ``component`` records of its own trouble (an ``error`` decision, no peer): the
    shape of an activity such as a dropped event, an expiring SVID, a failed export."""
    recorder = events.Recorder(
        events.MemorySink(), component=component, spiffe_id=spiffe(component)
    )
    return _one(
        recorder,
        activity,
        message,
        decision=events.Decision.ERROR,
        attributes=attributes,
        now=at(seconds),
    )


def _auth() -> events.Recorder:
    # trustmesh.auth.service.AuthService: token decisions default to Service Ticket Request
    return events.Recorder(
        events.MemorySink(), component="auth", spiffe_id=spiffe("auth"), default=_TICKET
    )


def login_failed(
    login: str, seconds: float, *, sub: str | None = None, ip: str | None = None
) -> dict[str, Any]:
    """trustmesh.auth.pages.LoginPages._refused. ``ip``: the client address as OCSF's
    src_endpoint, which credential stuffing needs (the provider does not record it yet)."""
    return _one(
        _auth(),
        Reason.LOGIN_FAILED,
        "login refused",
        decision=events.Decision.DENY,
        sub=sub,
        attributes={"login": login[:128]},
        src=events.Endpoint(ip=ip) if ip else None,
        now=at(seconds),
    )


def login_succeeded(login: str, user_id: str, seconds: float) -> dict[str, Any]:
    return _one(
        _auth(),
        Reason.LOGIN_SUCCEEDED,
        "login",
        sub=user_id,
        attributes={"login": login, "amr": "pwd"},
        now=at(seconds),
    )


def refresh_reused(user_id: str, seconds: float) -> dict[str, Any]:
    """trustmesh.auth.user_grants: a refresh token used twice."""
    return _one(
        _auth(),
        Activity.TOKEN_REVOKED,
        "refresh token reused: the family is revoked",
        decision=events.Decision.DENY,
        client_id="storefront",
        sub=user_id,
        now=at(seconds),
    )


def token_revoked(user_id: str, seconds: float, cause: str) -> dict[str, Any]:
    """trustmesh.auth.revocations.Revocations.token."""
    return _one(
        _auth(),
        Activity.TOKEN_REVOKED,
        "access token revoked" + ("" if cause == "revoked" else f" ({cause})"),
        client_id="storefront",
        jti="a1b2c3",
        sub=user_id,
        attributes={"cause": cause},
        now=at(seconds),
    )


def admin_change(code: Code, seconds: float, *, by: str = "alice") -> dict[str, Any]:
    """trustmesh.auth.admin.AdminAPI._user_event: a change made through the admin API."""
    return _one(
        _auth(),
        code,
        "user locked",
        peer_spiffe_id=None,
        sub="u-42",
        attributes={"username": "bob", "roles": "customer", "by": by},
        now=at(seconds),
    )


def gateway_refusal(
    reason: Reason, seconds: float, *, client: str = "203.0.113.7"
) -> dict[str, Any]:
    """trustmesh.gateway.app.GatewayApp._emit for a refusal (the request's context as
    attributes)."""
    recorder = events.Recorder(
        events.MemorySink(), component="gateway", spiffe_id=spiffe("gateway")
    )
    return _one(
        recorder,
        reason,
        "refused",
        decision=events.Decision.DENY,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        attributes={
            "method": "GET",
            "path": "/orders",
            "client": client,
            "route": "routes[1]",
            "template": "/orders",
        },
        now=at(seconds),
    )


def call(
    decision: events.Decision,
    reason: Reason,
    seconds: float,
    *,
    callee: str = "orders",
    caller: str | None = None,
) -> dict[str, Any]:
    """trustmesh.sdk.middleware.ZeroTrustMiddleware._emit: a decision on a call."""
    recorder = events.Recorder(events.MemorySink(), component=callee, spiffe_id=spiffe(callee))
    return _one(
        recorder,
        reason,
        "call denied by policy" if decision is events.Decision.DENY else "call allowed",
        decision=decision,
        peer_spiffe_id=caller,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        src=events.Endpoint(ip="127.0.0.1", port=50123),
        attributes={"method": "POST", "path": "/orders", "route": None, "policy": None},
        now=at(seconds),
    )


def secrets_decision(
    reason: Reason,
    seconds: float,
    *,
    caller: str,
    path: str,
    operation: str = "get",
    message: str = "read",
) -> dict[str, Any]:
    """trustmesh.secrets.app.SecretsApp._record."""
    recorder = events.Recorder(
        events.MemorySink(), component="secrets", spiffe_id=spiffe("secrets")
    )
    return _one(
        recorder,
        reason,
        message[:200] or reason.value,
        peer_spiffe_id=caller,
        attributes={"path": path[:256], "operation": operation},
        now=at(seconds),
    )


def events_dropped(count: int, seconds: float, *, component: str = "gateway") -> dict[str, Any]:
    """trustmesh.sdk.delivery.AuditSink: a full spool dropped ``count`` events (the
    ``drop`` policy), told once the collector answers again."""
    return _component_event(
        component,
        Activity.EVENTS_DROPPED,
        "events dropped: the audit spool was full",
        {"dropped": count, "spool_max_bytes": 65536},
        seconds,
    )


def export_failed(receiver: str, seconds: float) -> dict[str, Any]:
    """trustmesh.audit.server: a receiver gave up on an alert or a checkpoint copy."""
    return _component_event(
        "audit",
        Activity.EXPORT_FAILED,
        f"{receiver}: alert x not delivered",
        {"receiver": receiver, "item": "alert x", "why": "503 (after 6 attempts)"},
        seconds,
    )


def write_rules(directory: Path, text: str, name: str = "rules.yml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def feed(detector: Detector, stream: list[dict[str, Any]]) -> list[Alert]:
    """Every alert ``stream`` raises, the windows decided at the end."""
    alerts = [alert for event in stream for alert in detector.observe(event)]
    return alerts + detector.flush()


def shipped(**settings: Any) -> Detector:
    return Detector.shipped(DetectorSettings(**settings))


def named(alerts: list[Alert], name: str, detector: Detector) -> list[Alert]:
    """The alerts of the rule called ``name``."""
    keys = {r.info.key for r in detector.ruleset.detections if r.info.name == name}
    keys |= {r.info.key for r in detector.ruleset.correlations if r.info.name == name}
    return [a for a in alerts if a.rule_id in keys]


def svid_expiring(
    seconds: float, *, component: str = "gateway", serial: str = "1f"
) -> dict[str, Any]:
    """trustmesh.sdk.x509source.record_expiring: an SVID below 20% of its lifetime that
    was not renewed."""
    return _component_event(
        component,
        Activity.SVID_EXPIRING,
        "the X.509-SVID was not renewed and expires soon",
        {"not_after": "2026-12-07T18:00:00+00:00", "serial": serial},
        seconds,
    )


def runtime_violation(
    reason: Reason, seconds: float, *, service: str = "orders", mode: str = "enforce"
) -> dict[str, Any]:
    """trustmesh.sdk.guard.RuntimeGuard.violation: the service's process broke its
    runtime profile (recorded by the service's own recorder, as the runner wires it)."""
    from trustmesh.config.runtime import RuntimeProfile
    from trustmesh.sdk.guard import RuntimeGuard, RuntimeViolation

    sink = events.MemorySink()
    recorder = events.Recorder(sink, component=service, spiffe_id=spiffe(service))
    guard = RuntimeGuard(RuntimeProfile.model_validate({"mode": mode}), recorder)
    recorder.clock = lambda: at(seconds)
    with contextlib.suppress(RuntimeViolation):  # enforce mode refuses after recording
        guard.violation(reason, "subprocess", "subprocess.Popen", "/bin/sh -c id")
    (event,) = sink.events
    return event.to_ocsf()
