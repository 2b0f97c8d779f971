"""The shipped ruleset, on events shaped exactly as the components record them: each rule
fires, its near misses do not, and the acceptance scenarios of issue 16 hold over the
whole ruleset at once."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from auditkit import (
    admin_change,
    call,
    events_dropped,
    export_failed,
    feed,
    gateway_refusal,
    login_failed,
    named,
    refresh_reused,
    runtime_violation,
    secrets_decision,
    shipped,
    spiffe,
    svid_expiring,
    token_revoked,
)

from trustmesh import events
from trustmesh.audit.detection import SHIPPED_RULES
from trustmesh.audit.extensions import Action
from trustmesh.reasons import Activity, Reason

Stream = list[dict[str, Any]]
DENY, ALLOW = events.Decision.DENY, events.Decision.ALLOW


def logins(n: int, *, every: float = 5, ip: str | None = None, distinct: bool = False) -> Stream:
    return [
        login_failed(
            f"user{i}" if distinct else "alice",
            i * every,
            ip=ip if ip != "each" else f"198.51.100.{i}",
        )
        for i in range(n)
    ]


def reads(n: int, *, caller: str = "payments", operation: str = "get", every: float = 1) -> Stream:
    return [
        secrets_decision(
            Reason.POLICY_ALLOW,
            i * every,
            caller=spiffe(caller),
            path="secret/data/payments/key",
            operation=operation,
        )
        for i in range(n)
    ]


def limited(n: int, *, client: str = "203.0.113.7", every: float = 2) -> Stream:
    return [gateway_refusal(Reason.RATE_LIMITED, i * every, client=client) for i in range(n)]


def calls_from(callers: list[str], start: float) -> Stream:
    return [
        call(ALLOW, Reason.POLICY_ALLOW, start + i, caller=spiffe(c)) for i, c in enumerate(callers)
    ]


#: rule name → (the stream that fires it once, near misses that do not)
CASES: dict[str, tuple[Stream, list[Stream]]] = {
    "brute_force_login": (
        logins(10),
        [
            logins(9),
            logins(10, every=6.8),
            logins(5) + [login_failed("bob", 30 + i) for i in range(5)],
        ],
    ),
    "credential_stuffing": (
        logins(10, ip="198.51.100.1", distinct=True),
        [
            logins(9, ip="198.51.100.1", distinct=True),
            logins(10, ip="198.51.100.1", distinct=True, every=34),
            logins(10, ip="each", distinct=True),
            logins(12, ip="198.51.100.1"),  # one account: brute force, not stuffing
        ],
    ),
    "password_spraying": (
        logins(20, ip="each", distinct=True, every=60),
        [
            logins(19, ip="each", distinct=True, every=60),
            logins(20, ip="each", distinct=True, every=95),
        ],
    ),
    "revoked_token_presented": (
        [gateway_refusal(Reason.TOKEN_REVOKED, 0)],
        [
            [gateway_refusal(Reason.TOKEN_EXPIRED, 0)],
            [token_revoked("u-1", 0, "revoked")],  # the revocation itself
        ],
    ),
    "grant_replayed": (
        [refresh_reused("u-1", 0), token_revoked("u-1", 0.1, "refresh-token-reused")],
        [[token_revoked("u-1", 0, "revoked")], [token_revoked("u-1", 0, "password-changed")]],
    ),
    "lateral_movement": (
        [call(DENY, Reason.POLICY_DENY, 0, callee="orders", caller=spiffe("payments"))],
        [
            [call(ALLOW, Reason.POLICY_ALLOW, 0, callee="payments", caller=spiffe("orders"))],
            [gateway_refusal(Reason.POLICY_DENY, 0)],  # an edge policy: a user, not a workload
            [
                secrets_decision(
                    Reason.POLICY_DENY, 0, caller=spiffe("orders"), path="secret/data/x"
                )
            ],
        ],
    ),
    "token_bound_elsewhere": (
        [call(DENY, Reason.TOKEN_NOT_BOUND, 0, callee="payments", caller=spiffe("inventory"))],
        [
            [
                call(
                    DENY,
                    Reason.TOKEN_BAD_SIGNATURE,
                    0,
                    callee="payments",
                    caller=spiffe("inventory"),
                )
            ]
        ],
    ),
    "secret_read_burst": (
        reads(30),
        [
            reads(29),
            reads(30, every=2.1),
            reads(15) + reads(15, caller="orders"),
            reads(30, operation="post"),
        ],
    ),
    "secret_access_denied": (
        [
            secrets_decision(
                Reason.POLICY_DENY, 0, caller=spiffe("orders"), path="secret/data/payments/key"
            )
        ],
        [
            reads(1),
            [call(DENY, Reason.TOKEN_MISSING, 0, callee="orders", caller=spiffe("payments"))],
        ],
    ),
    "rate_limit_abuse": (
        limited(20),
        [limited(19), limited(20, every=3.2), limited(10) + limited(10, client="203.0.113.8")],
    ),
    "admin_outside_hours": (
        [admin_change(Activity.USER_LOCKED, 10 * 3600)],  # Monday 22:00 UTC
        [[admin_change(Activity.USER_LOCKED, 0)], [admin_change(Activity.USER_LOCKED, -3 * 3600)]],
    ),
    "events_dropped": (
        [events_dropped(3, 0)],
        [[admin_change(Activity.USER_LOCKED, 0)], reads(1)],
    ),
    "export_failed": (
        [export_failed("webhook siem", 0), export_failed("webhook siem", 300)],  # one alert
        [[events_dropped(3, 0)], [admin_change(Activity.USER_LOCKED, 0)]],
    ),
    "runtime_violation": (
        # twice within 10 minutes, one service, one rule: one alert
        [
            runtime_violation(Reason.RUNTIME_SUBPROCESS_DENIED, 0),
            runtime_violation(Reason.RUNTIME_SUBPROCESS_DENIED, 60),
        ],
        [
            [call(ALLOW, Reason.POLICY_ALLOW, 0, callee="orders", caller=spiffe("payments"))],
            [events_dropped(3, 0)],
        ],
    ),
    "svid_expiring": (
        # told twice for one SVID (the gateway, then again after a restart): one alert
        [svid_expiring(0), svid_expiring(120)],
        [[events_dropped(3, 0)], [admin_change(Activity.USER_LOCKED, 0)]],
    ),
    "new_spiffe_id": (
        calls_from(["orders", "storefront"], 0)
        + calls_from(["orders", "intruder", "intruder"], 3600),
        [calls_from(["orders", "storefront"], 0) + calls_from(["storefront", "orders"], 3600)],
    ),
}


def alerting_rules() -> set[str]:
    detector = shipped()
    names = {r.info.name for r in detector.ruleset.detections if r.output}
    return {str(n) for n in names | {r.info.name for r in detector.ruleset.correlations}}


def test_every_alerting_rule_has_a_case() -> None:
    assert set(CASES) == alerting_rules()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_rule_fires_once(name: str) -> None:
    detector = shipped()
    alerts = feed(detector, CASES[name][0])
    assert len(named(alerts, name, detector)) == 1, [a.title for a in alerts]


@pytest.mark.parametrize(
    ("name", "index"),
    [(n, i) for n, (_, misses) in sorted(CASES.items()) for i in range(len(misses))],
)
def test_a_near_miss_does_not_fire(name: str, index: int) -> None:
    detector = shipped()
    assert named(feed(detector, CASES[name][1][index]), name, detector) == []


# --- issue 16's acceptance, over the whole ruleset ----------------------------------------


def only(stream: Stream, **settings: Any) -> Callable[[], Any]:
    detector = shipped(**settings)
    return lambda: feed(detector, stream)


def test_ten_failed_logins_for_one_user_within_60s_are_exactly_one_alert() -> None:
    (alert,) = only(logins(10, every=6))()
    assert alert.title == "Brute-force login against one account"
    assert alert.kind == "event_count"
    assert alert.measure == 10
    assert len(alert.event_uids) == 10
    assert alert.group == (("unmapped.trustmesh.attributes.login", "alice"),)
    (lock,) = alert.actions
    assert (lock.action, lock.target, lock.dry_run) == (Action.LOCK_USER, "alice", True)


def test_a_denied_lateral_call_in_the_demo_is_an_alert() -> None:
    # the demo's declaration lets orders call payments, never payments call orders
    (alert,) = only(
        [call(DENY, Reason.POLICY_DENY, 0, callee="orders", caller=spiffe("payments"))]
    )()
    assert alert.title == "Denied service-to-service call (lateral movement)"
    assert dict(alert.group) == {
        "unmapped.trustmesh.peer_spiffe_id": spiffe("payments"),
        "metadata.product.feature.name": "orders",
    }
    (suspend,) = alert.actions
    assert (suspend.action, suspend.target) == (Action.SUSPEND_SPIFFE_ID, spiffe("payments"))


def test_a_revoked_token_replayed_is_an_alert() -> None:
    stream = [token_revoked("u-7", 0, "revoked"), gateway_refusal(Reason.TOKEN_REVOKED, 30)]
    (alert,) = only(stream)()
    assert alert.title == "Revoked token presented"
    assert alert.event_uids == (stream[1]["metadata"]["uid"],)
    (block,) = alert.actions  # the gateway names the client (no workload: nothing to suspend)
    assert (block.action, block.target, block.dry_run) == (
        Action.BLOCK_ADDRESS,
        "203.0.113.7",
        True,
    )


@pytest.mark.parametrize("mode", ["monitor", "enforce"])
def test_a_shell_spawned_in_a_service_is_an_alert_in_either_mode(mode: str) -> None:
    stream = [
        runtime_violation(Reason.RUNTIME_SUBPROCESS_DENIED, 0, mode=mode),
        runtime_violation(Reason.RUNTIME_CONNECT_DENIED, 1, mode=mode),
        runtime_violation(Reason.RUNTIME_SUBPROCESS_DENIED, 2, service="payments", mode=mode),
    ]
    alerts = only(stream)()
    assert [a.title for a in alerts] == ["Runtime profile violated in a service"] * 3
    assert [dict(a.group)["unmapped.trustmesh.spiffe_id"] for a in alerts] == [
        spiffe("orders"),
        spiffe("orders"),
        spiffe("payments"),
    ]
    suspend = alerts[0].actions[0]
    assert (suspend.action, suspend.target, suspend.dry_run) == (
        Action.SUSPEND_SPIFFE_ID,
        spiffe("orders"),
        True,
    )


def test_ordinary_traffic_raises_nothing() -> None:
    stream = (
        calls_from(["orders"] * 5, 0) + reads(3) + [gateway_refusal(Reason.REQUEST_FORWARDED, 9)]
    )
    assert only(stream)() == []


# --- packaging ------------------------------------------------------------------------------


def test_the_rule_files_ship_as_package_data() -> None:
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["trustmesh"]
    package = root / "src" / "trustmesh"
    files = sorted(SHIPPED_RULES.glob("*.yml"))
    assert len(files) == 15
    for path in files:
        relative = str(path.relative_to(package))
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
