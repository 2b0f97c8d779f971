"""The detector facade: the rule index never hides a match, dedup, first-seen baselines,
response actions and dry runs, derived time fields, replay of a recorded event log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from auditkit import (
    T0_MS,
    at,
    call,
    feed,
    gateway_refusal,
    login_failed,
    secrets_decision,
    shipped,
    spiffe,
    write_rules,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh import events
from trustmesh.audit.behaviour import WorkingHours
from trustmesh.audit.detection import SHIPPED_RULES, Detector, DetectorSettings, run_rules
from trustmesh.audit.extensions import Action
from trustmesh.errors import ConfigError, UsageError
from trustmesh.reasons import Reason

RULE = """\
title: Denied
id: 22222222-0000-4000-8000-000000000001
logsource: {product: trustmesh, category: api_activity}
detection:
  sel: {unmapped.trustmesh.reason: policy-deny}
  condition: sel
"""


def one_rule(tmp_path: Path, extra: str, **options: Any) -> Detector:
    return Detector.from_paths([write_rules(tmp_path, RULE + extra)], DetectorSettings(**options))


def denied(seconds: float, caller: str = "payments", callee: str = "orders") -> dict[str, Any]:
    return call(
        events.Decision.DENY, Reason.POLICY_DENY, seconds, callee=callee, caller=spiffe(caller)
    )


# --- the index -------------------------------------------------------------------------

_REASONS = [
    Reason.POLICY_DENY,
    Reason.POLICY_ALLOW,
    Reason.TOKEN_REVOKED,
    Reason.TOKEN_NOT_BOUND,
    Reason.RATE_LIMITED,
    Reason.LOGIN_FAILED,
    Reason.TOKEN_MISSING,
]


@st.composite
def component_events(draw: st.DrawFn) -> dict[str, Any]:
    reason = draw(st.sampled_from(_REASONS))
    seconds = draw(st.integers(0, 86_400 * 3))
    kind = draw(st.sampled_from(["call", "gateway", "secrets", "login"]))
    if kind == "login":
        return login_failed(draw(st.sampled_from(["a", "b"])), seconds)
    if kind == "gateway":
        return gateway_refusal(reason, seconds)
    if kind == "secrets":
        return secrets_decision(reason, seconds, caller=spiffe("payments"), path="secret/data/x")
    decision = draw(st.sampled_from(list(events.Decision)))
    return call(
        decision,
        reason,
        seconds,
        callee=draw(st.sampled_from(["orders", "secrets"])),
        caller=spiffe("p"),
    )


@settings(max_examples=200)
@given(component_events(), st.sampled_from([None, ["policy-deny", "x"], "POLICY-DENY", 3]))
def test_the_index_never_hides_a_matching_rule(event: dict[str, Any], reason: object) -> None:
    detector = SHIPPED
    if reason is not None:  # odd values too: a list, another case, a number
        event["unmapped"]["trustmesh"]["reason"] = reason
    every = [r for r in detector._rules if r.predicate(event)]
    candidates = detector._candidates(event)  # the index's contract is the point here
    assert [r for r in every if r not in candidates] == []


SHIPPED = shipped()


def test_an_event_time_must_be_epoch_milliseconds() -> None:
    for bad in ({}, {"time": "2026-01-05T12:00:00Z"}, {"time": 1.5}, {"time": True}):
        with pytest.raises(UsageError, match="epoch milliseconds"):
            shipped().observe(bad)


# --- dedup, baseline ---------------------------------------------------------------------


def test_dedup_alerts_once_per_group_and_timespan(tmp_path: Path) -> None:
    d = one_rule(
        tmp_path, "dedup: {group-by: [unmapped.trustmesh.peer_spiffe_id], timespan: 10m}\n"
    )
    alerts = feed(
        d, [denied(0), denied(1), denied(2, caller="inventory"), denied(599), denied(601)]
    )
    assert [(a.group[0][1], a.window_start) for a in alerts] == [
        (spiffe("payments"), T0_MS),
        (spiffe("inventory"), T0_MS + 2000),
        (spiffe("payments"), T0_MS + 601_000),
    ]
    assert alerts[0].window_end == T0_MS + 600_000
    assert d.stats.matches == {"22222222-0000-4000-8000-000000000001": 5}


def test_dedup_groups_an_absent_field_as_none(tmp_path: Path) -> None:
    d = one_rule(tmp_path, "dedup: {group-by: [src_endpoint.hostname], timespan: 1m}\n")
    (alert,) = feed(d, [denied(0), denied(1)])
    assert alert.group == (("src_endpoint.hostname", None),)


def test_without_dedup_every_match_alerts(tmp_path: Path) -> None:
    assert len(feed(one_rule(tmp_path, ""), [denied(0), denied(0)])) == 2


BASELINE = (
    "baseline: {first-seen: [unmapped.trustmesh.peer_spiffe_id], learning: 1h, capacity: 2}\n"
)


def test_a_baseline_learns_then_alerts_once_per_new_value(tmp_path: Path) -> None:
    d = one_rule(tmp_path, BASELINE)
    learning = [denied(0, "a"), denied(3599, "b")]
    after = [denied(3600, "a"), denied(3601, "c"), denied(3602, "c")]
    (alert,) = feed(d, learning + after)
    assert alert.group == (("unmapped.trustmesh.peer_spiffe_id", spiffe("c")),)
    assert alert.window_start == T0_MS + 3_601_000


def test_a_baseline_forgets_the_least_recently_seen_at_capacity(tmp_path: Path) -> None:
    d = one_rule(tmp_path, BASELINE)
    stream = [denied(0, "a"), denied(1, "b"), denied(4000, "c"), denied(4001, "a")]
    alerts = feed(d, stream)  # c pushed a out (capacity 2): a is new again
    assert [a.group[0][1] for a in alerts] == [spiffe("c"), spiffe("a")]
    assert d.stats.baseline_evicted == 2


def test_a_baseline_skips_events_without_its_fields(tmp_path: Path) -> None:
    d = one_rule(tmp_path, BASELINE.replace("learning: 1h", "learning: 1s"))
    event = denied(10)
    del event["unmapped"]["trustmesh"]["peer_spiffe_id"]
    assert feed(d, [denied(0), event]) == []


# --- responses -------------------------------------------------------------------------


RESPONSE = """\
response:
  - {action: suspend-spiffe-id}
  - {action: block-address, duration: 15m}
  - {action: block-address, field: unmapped.trustmesh.attributes.path, duration: 1m}
  - {action: revoke-tokens, field: unmapped.trustmesh.peer_spiffe_id, dry-run: true}
"""


def test_actions_are_planned_with_their_targets(tmp_path: Path) -> None:
    (alert,) = feed(one_rule(tmp_path, RESPONSE), [denied(0)])
    suspend, block, revoke = alert.actions  # the path is no address: nothing to block
    assert (suspend.action, suspend.target, suspend.dry_run) == (
        Action.SUSPEND_SPIFFE_ID,
        spiffe("payments"),
        False,
    )
    assert (block.action, block.target, block.duration_ms) == (
        Action.BLOCK_ADDRESS,
        "127.0.0.1",
        900_000,
    )
    assert (revoke.action, revoke.dry_run) == (Action.REVOKE_TOKENS, True)


def test_a_target_that_is_not_of_its_kind_plans_nothing(tmp_path: Path) -> None:
    event = denied(0)
    event["unmapped"]["trustmesh"]["peer_spiffe_id"] = "https://evil.example/x"
    event["src_endpoint"]["ip"] = "not-an-ip"
    (alert,) = feed(one_rule(tmp_path, RESPONSE), [event])
    assert [a.action for a in alert.actions] == [Action.REVOKE_TOKENS]


def test_the_detector_dry_run_marks_every_action(tmp_path: Path) -> None:
    (alert,) = feed(one_rule(tmp_path, RESPONSE, dry_run=True), [denied(0)])
    assert alert.actions
    assert all(a.dry_run for a in alert.actions)


def test_a_correlation_target_comes_from_its_group_or_its_last_event(tmp_path: Path) -> None:
    text = RULE.replace("title: Denied", "title: Denied\nname: denied")
    text += "---\ntitle: Many\nid: 22222222-0000-4000-8000-000000000002\ncorrelation:\n"
    text += (
        "  type: event_count\n  rules: [denied]\n  group-by: [unmapped.trustmesh.peer_spiffe_id]\n"
    )
    text += "  timespan: 1m\n  condition: {gte: 2}\n"
    text += (
        "response:\n  - {action: suspend-spiffe-id}\n  - {action: block-address, duration: 1m}\n"
    )
    d = Detector.from_paths([write_rules(tmp_path, text)], DetectorSettings(lateness_ms=0))
    first, second = denied(0), denied(1)
    second["src_endpoint"]["ip"] = "192.0.2.9"
    (alert,) = feed(d, [first, second])
    assert [(a.action, a.target) for a in alert.actions] == [
        (Action.SUSPEND_SPIFFE_ID, spiffe("payments")),
        (Action.BLOCK_ADDRESS, "192.0.2.9"),
    ]


# --- derived time ------------------------------------------------------------------------


def test_working_hours_are_read_in_the_configured_timezone(tmp_path: Path) -> None:
    text = RULE.replace(
        "  condition: sel", "  day: {derived.working_hours: true}\n  condition: sel and not day"
    )
    paris = DetectorSettings(working_hours=WorkingHours(timezone="Europe/Paris", start=9, end=18))
    d = Detector.from_paths([write_rules(tmp_path, text)], paris)
    # 12:00 UTC is 13:00 in Paris (working); 17:30 UTC is 18:30 (not); 07:30 UTC 08:30 (not)
    alerts = feed(d, [denied(0), denied(5.5 * 3600), denied(-4.5 * 3600)])
    assert [a.window_start for a in alerts] == [T0_MS + 19_800_000, T0_MS - 16_200_000]
    weekend = feed(d, [denied(5 * 86_400)])  # Saturday noon
    assert len(weekend) == 1


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "not an IANA timezone"),
        ({"days": frozenset({0})}, "ISO weekdays"),
        ({"start": 18, "end": 8}, "0 <= start < end <= 24"),
    ],
)
def test_working_hours_are_validated(hours: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkingHours(**hours)


@pytest.mark.parametrize(
    "options", [{"lateness_ms": -1}, {"max_groups": 0}, {"max_alert_events": 0}]
)
def test_detector_settings_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DetectorSettings(**options)


# --- replay and values --------------------------------------------------------------------


def test_run_rules_replays_a_recorded_log_in_time_order(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    ticket = (events.EventClass.AUTHENTICATION, 4, "Service Ticket Request")
    with events.JsonLinesSink(log) as sink:
        recorder = events.Recorder(sink, component="auth", default=ticket)
        for i in reversed(range(10)):  # written out of order
            recorder.record(
                Reason.LOGIN_FAILED,
                "login refused",
                decision=events.Decision.DENY,
                attributes={"login": "alice"},
                now=at(i),
            )
    result = run_rules([SHIPPED_RULES], events.read_events(log))
    assert result.events == 10
    (alert,) = result.alerts
    assert alert.title == "Brute-force login against one account"
    assert alert.measure == 10
    assert len(set(alert.event_uids)) == 10
    assert sorted(result.matches.values()) == [10, 10, 10]  # the three login-failed inputs


def test_an_alert_is_a_plain_value(tmp_path: Path) -> None:
    (alert,) = feed(one_rule(tmp_path, RESPONSE), [denied(0)])
    doc = json.loads(json.dumps(alert.to_dict()))
    assert doc["rule_id"] == "22222222-0000-4000-8000-000000000001"
    assert doc["actions"][0] == {
        "action": "suspend-spiffe-id",
        "target": spiffe("payments"),
        "duration_ms": None,
        "dry_run": False,
        "field": "unmapped.trustmesh.peer_spiffe_id",
    }
    (again,) = feed(one_rule(tmp_path, RESPONSE), [denied(0)])
    assert again.uid == alert.uid  # same rule, group and window
    with pytest.raises(AttributeError):
        alert.level = "low"  # type: ignore[misc]
