"""Each control of `trustmesh attack` proven to matter (issue 20): the demo shop under
`trustmesh up` with defences switched off (test-only switches,
:mod:`trustmesh.config.switches`, honoured because the processes run with
``TRUSTMESH_TESTING_SWITCHES=1``), and `trustmesh attack` on it: each control whose
defence is off fails, and the command exits 1; the controls whose defences are on,
next to them, still hold.

Two stacks cover every control the existing tests do not (sql-injection, xss and
rate-limit are switched off with real settings in test_attack.py); the switches of one
stack do not touch each other's controls, which the controls that hold show:

- the gateway's: ``token-signature``, ``token-format``, ``token-binding``,
  ``path-normalisation``, ``request-framing``; and ``service-token`` alone, under which
  a call with no token still meets the call policy (both bypass controls hold);
- the rest: ``token-algorithms``, ``token-audience``, ``service-mtls``,
  ``service-token`` with ``call-policy`` (a service called straight with an SVID and no
  token is stopped by either: only both off let it in), ``secrets-policy``,
  ``audit-chain``; and brute force's defence — the collector's detection, not the
  lockout, which answers exactly as a wrong password does and so is invisible from
  outside — turned off by a real setting, ``detection: {shipped_rules: false}``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from demorig import demo_copy

from trustmesh.testing import run_cli as tm
from trustmesh.testing.switches import switch_off, switched_env

Controls = dict[str, dict[str, object]]


@contextlib.contextmanager
def _stack(prefix: str, *switches: str, detection: bool = True) -> Iterator[tuple[Path, Path]]:
    """The demo under `up`, its declaration turning ``switches`` off (and the shipped
    detection rules, unless ``detection``); stopped and removed after."""
    config = demo_copy(prefix)
    if not detection:
        text = config.read_text()
        config.write_text(text + "detection: {shipped_rules: false}\n")
    switch_off(config, *switches)
    state = config.parent / "state"
    try:
        up = tm(
            "up", "--config", str(config), "--state", str(state), "--detach", env=switched_env()
        )
        assert up.returncode == 0, up.stdout + up.stderr
        for name in switches:  # said loudly by `up`, and by the component that honours it
            assert f"TESTING SWITCH {name}: DEFENCE OFF" in up.stderr
        yield config, state
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(config.parent, ignore_errors=True)


def _attack(config: Path, state: Path, *only: str) -> tuple[int, Controls]:
    ran = tm(
        "attack", "--config", str(config), "--state", str(state), "--json",
        *(f"--only={name}" for name in only), env=switched_env(),
    )  # fmt: skip
    assert ran.returncode in (0, 1), ran.stdout + ran.stderr
    controls = {c["name"]: c for c in json.loads(ran.stdout)["controls"]}
    assert sorted(controls) == sorted(only)
    return ran.returncode, controls


def _verdicts(controls: Controls) -> dict[str, bool]:
    return {name: bool(c["passed"]) for name, c in controls.items()}


def _observed(controls: Controls, name: str) -> str:
    return str(controls[name]["observed"])


@pytest.mark.xdist_group("attack-switches-gateway")
def test_the_gateways_defences_each_fail_their_control() -> None:
    failing = (
        "token-forged", "token-not-a-jwt", "token-bound-replay", "path-traversal",
        "request-smuggling",
    )  # fmt: skip
    holding = (
        "token-alg-none", "token-other-audience", "gateway-bypass-svid-no-token",
        "lateral-movement",
    )  # fmt: skip
    with _stack(
        "tmsg", "token-signature", "token-format", "token-binding", "path-normalisation",
        "request-framing", "service-token",
    ) as (config, state):  # fmt: skip
        logged = (state / "logs" / "gateway.log").read_text()
        assert "gateway: TESTING SWITCH token-signature: DEFENCE OFF" in logged
        code, controls = _attack(config, state, *failing, *holding)
    assert code == 1
    assert _verdicts(controls) == {**dict.fromkeys(failing, False), **dict.fromkeys(holding, True)}
    # each accepted credential went on to the edge policy (403), no longer refused (401)
    for name in ("token-forged", "token-not-a-jwt", "token-bound-replay"):
        assert "answered 403" in _observed(controls, name), controls[name]
    # a dot segment took the request onto another route, which asked for a token
    assert "GET /items/../admin/orders: answered 401" in _observed(controls, "path-traversal")
    assert "not refused with a single 400" in _observed(controls, "request-smuggling")


@pytest.mark.xdist_group("attack-switches-services")
def test_the_services_and_the_rest_each_fail_their_control() -> None:
    failing = (
        "gateway-bypass-no-svid", "gateway-bypass-svid-no-token", "lateral-movement",
        "secret-unauthorised", "token-alg-none", "token-other-audience", "brute-force",
        "audit-tamper",
    )  # fmt: skip
    holding = ("token-forged", "token-not-a-jwt", "token-bound-replay")
    with _stack(
        "tmss", "token-algorithms", "token-audience", "service-mtls", "service-token",
        "call-policy", "secrets-policy", "audit-chain", detection=False,
    ) as (config, state):  # fmt: skip
        logged = (state / "logs" / "orders.log").read_text()
        assert "service: TESTING SWITCH call-policy: DEFENCE OFF" in logged
        code, controls = _attack(config, state, *failing, *holding)
    assert code == 1
    assert _verdicts(controls) == {**dict.fromkeys(failing, False), **dict.fromkeys(holding, True)}
    assert "answered a caller with no certificate" in _observed(controls, "gateway-bypass-no-svid")
    # a stranger logged in and read another's secret; services answered straight
    secret = _observed(controls, "secret-unauthorised")
    assert "GET /v1/secret/data/payments/processor: answered 200" in secret
    for name in ("gateway-bypass-svid-no-token", "lateral-movement"):
        assert "answered 404" in _observed(controls, name), controls[name]  # the app's own
    for name in ("token-alg-none", "token-other-audience"):
        assert "answered 403" in _observed(controls, name), controls[name]
    assert "no brute-force alert in the audit log" in _observed(controls, "brute-force")
    tamper = _observed(controls, "audit-tamper")
    assert "body changed: not detected" in tamper  # the chain's links, and only they
    assert "deleted: verify names" in tamper
    assert "cut off: verify names" in tamper
