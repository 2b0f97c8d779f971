"""A loop that keeps violating its runtime profile cannot flood the audit pipeline: in a
window each rule, operation and target is recorded once, and at most FLOOD_EVENTS in all; the rest
are counted per rule and told in one runtime-flood event with the first violation of a
later window (or at exit). Enforce mode still refuses every one. And a declared name
that moved to another address is resolved again. Judged by calling the guard's hook
directly (nothing is installed in pytest's process), on a test clock."""

from __future__ import annotations

from typing import Any

import pytest

from trustmesh import events
from trustmesh.config.runtime import RuntimeProfile
from trustmesh.reasons import Reason
from trustmesh.sdk import guard as guard_module
from trustmesh.sdk.guard import (
    FLOOD_EVENTS,
    FLOOD_WINDOW,
    RESOLVE_EVERY,
    RuntimeGuard,
    RuntimeViolation,
)
from trustmesh.testing import FakeClock


def _guard(mode: str) -> tuple[RuntimeGuard, events.MemorySink, FakeClock]:
    sink, clock = events.MemorySink(), FakeClock()
    guard = RuntimeGuard(
        RuntimeProfile.model_validate({"mode": mode}),
        events.Recorder(sink, component="orders"),
        clock=clock.monotonic,
    )
    return guard, sink, clock


def _connect(guard: RuntimeGuard, host: str, port: int = 443) -> None:
    guard.hook("socket.connect", (None, (host, port)))


def _attributes(event: Any) -> dict[str, Any]:
    return dict(event.attributes)


def test_a_repeated_violation_is_recorded_once_a_window_and_counted() -> None:
    guard, sink, clock = _guard("monitor")
    for _ in range(1000):
        _connect(guard, "203.0.113.9")
    spawn = ("/bin/sh", ["/bin/sh", "-c", "id"], None)
    for _ in range(3):
        guard.hook("subprocess.Popen", spawn)
    assert [e.reason for e in sink.events] == [
        Reason.RUNTIME_CONNECT_DENIED,
        Reason.RUNTIME_SUBPROCESS_DENIED,
    ]
    clock.advance(FLOOD_WINDOW)
    _connect(guard, "203.0.113.9")  # a new window: recorded again, after the counts
    flood, again = sink.events[2:]
    assert flood.reason == Reason.RUNTIME_FLOOD
    assert _attributes(flood)["suppressed"] == 1001
    assert _attributes(flood)["suppressed_by_rule"] == "connect=999 subprocess=2"
    assert flood.decision == events.Decision.WOULD_DENY
    assert "1001 more" in flood.message
    assert again.reason == Reason.RUNTIME_CONNECT_DENIED


def test_distinct_violations_stop_at_the_bound_and_exit_tells_the_rest() -> None:
    guard, sink, _ = _guard("monitor")
    for i in range(FLOOD_EVENTS + 50):
        _connect(guard, f"198.51.100.{i % 250}", 1000 + i)
    assert len(sink.events) == FLOOD_EVENTS
    guard.report_suppressed()  # what install() registers for the process's exit
    assert sink.events[-1].reason == Reason.RUNTIME_FLOOD
    assert _attributes(sink.events[-1])["suppressed_by_rule"] == "connect=50"
    guard.report_suppressed()  # told once
    assert len(sink.events) == FLOOD_EVENTS + 1


def test_enforce_refuses_every_one_it_does_not_record() -> None:
    guard, sink, _ = _guard("enforce")
    for _ in range(20):
        with pytest.raises(RuntimeViolation):
            _connect(guard, "203.0.113.9")
    assert len(sink.events) == 1
    assert sink.events[0].decision == events.Decision.DENY


def test_a_declared_name_that_moved_is_resolved_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The addresses of a declared name, resolved at start, are resolved again when a
    connection is refused (at most every RESOLVE_EVERY seconds): the name's new address
    is allowed; an address it never had stays refused. (The name service is the test's:
    what it answers, not the guard's decision, is what the test controls.)"""
    answers = {"api.partner.example": {"192.0.2.10"}}
    monkeypatch.setattr(guard_module, "_resolved", lambda name: set(answers.get(name, ())))
    sink, clock = events.MemorySink(), FakeClock()
    guard = RuntimeGuard(
        RuntimeProfile.model_validate({"mode": "monitor", "connect": ["api.partner.example:443"]}),
        events.Recorder(sink, component="orders"),
        clock=clock.monotonic,
    )
    _connect(guard, "192.0.2.10")
    assert sink.events == []
    answers["api.partner.example"] = {"192.0.2.20"}  # the name moved
    _connect(guard, "192.0.2.20")  # too soon to ask again: refused
    assert [e.reason for e in sink.events] == [Reason.RUNTIME_CONNECT_DENIED]
    clock.advance(RESOLVE_EVERY)
    _connect(guard, "192.0.2.20")
    _connect(guard, "192.0.2.10")  # its old address is kept
    assert len(sink.events) == 1
    _connect(guard, "192.0.2.20", 8443)  # the declared port only
    _connect(guard, "198.51.100.7")  # never the name's
    assert [e.reason for e in sink.events[1:]] == [Reason.RUNTIME_CONNECT_DENIED] * 2
