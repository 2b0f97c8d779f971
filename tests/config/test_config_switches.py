"""Test-only defence switches (``testing: {defences_off: [...]}``) fail closed: a name
outside the closed set is a config error naming it; ``config check --strict`` refuses
the section; and without ``TRUSTMESH_TESTING_SWITCHES=1`` every process given such a
declaration refuses to start — ``trustmesh up`` before it starts anything, a component,
a declared service. Where the environment allows them, each component honours only its
own and says so loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmesh.cli import config_cmd
from trustmesh.config import parse_config
from trustmesh.config.switches import DEFENCES, SWITCHES_ENV, check_switches, defences_off
from trustmesh.errors import ConfigError
from trustmesh.testing import run_cli
from trustmesh.testing.switches import switch_off, switched_env

runner = CliRunner()

BASE = """\
trust_domain: shop.example
dev: true
services:
  orders: {run: "trustmesh.demo.orders:app"}
  payments: {run: "trustmesh.demo.payments:app"}
calls:
  - {from: orders, to: payments, allow: ["POST /charges"]}
  - {from: payments, to: orders, allow: ["GET /orders/{id}"]}
"""
#: What the gateway's and the secrets service's switches need running (after the
#: switches: the tests name the section's line, 9)
RUNNING = """\
gateway:
  policies: [edge.cedar]
  routes:
    - {path: /orders, to: orders, methods: [GET]}
secrets: {}
"""


def _declaration(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "trustmesh.yaml"
    path.write_text(BASE, encoding="utf-8")
    switch_off(path, *names)
    path.write_text(path.read_text(encoding="utf-8") + RUNNING, encoding="utf-8")
    edge = 'permit (principal is User, action == Action::"GET", resource == Route::"/orders");\n'
    (tmp_path / "edge.cedar").write_text(edge, encoding="utf-8")
    return path


def _without_switches() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != SWITCHES_ENV}


def test_an_unknown_switch_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "trustmesh.yaml"
    path.write_text(BASE + "testing: {defences_off: [call-policy, waf]}\n", encoding="utf-8")
    result = runner.invoke(config_cmd.app, ["check", "-c", str(path)])
    assert result.exit_code == 2
    assert f"{path}:9: testing.defences_off: 'waf' is not a defence switch" in result.stderr
    assert "one of: token-signature, token-algorithms" in result.stderr


def test_a_switch_named_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "testing: {defences_off: [call-policy, call-policy]}\n", source="t")
    assert "a switch is named twice" in info.value.problems[0]


def test_strict_refuses_the_section_naming_each_switch(tmp_path: Path) -> None:
    path = _declaration(tmp_path, "token-audience", "secrets-policy")
    assert runner.invoke(config_cmd.app, ["check", "-c", str(path)]).exit_code == 0
    result = runner.invoke(config_cmd.app, ["check", "--strict", "-c", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    first = f"strict: {path}:9: testing.defences_off[0]: the test switch 'token-audience'"
    assert lines[0].startswith(first)
    assert "testing.defences_off[1]: the test switch 'secrets-policy'" in lines[1]
    assert len(lines) == 3  # and the count: nothing else in the declaration is refused


def test_check_refuses_without_the_environment_and_names_the_switches() -> None:
    config = parse_config(BASE + "testing: {defences_off: [service-mtls]}\n", source="t")
    with pytest.raises(ConfigError) as info:
        check_switches(config, {})
    assert "service-mtls" in info.value.detail
    assert f"{SWITCHES_ENV}=1" in info.value.detail
    with pytest.raises(ConfigError):
        check_switches(config, {SWITCHES_ENV: "yes"})  # exactly 1
    check_switches(config, {SWITCHES_ENV: "1"})
    check_switches(parse_config(BASE, source="t"), {})  # no switch: nothing to consent to


def test_each_component_honours_its_own_switches_loudly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(
        BASE + "testing: {defences_off: [token-binding, call-policy, service-mtls]}\n" + RUNNING,
        source="t",
    )
    allowed = {SWITCHES_ENV: "1"}
    assert defences_off(config, "gateway", allowed) == {"token-binding"}
    assert defences_off(config, "service", allowed) == {"call-policy", "service-mtls"}
    assert defences_off(config, "secrets", allowed) == frozenset()
    warned = capsys.readouterr().err.splitlines()
    assert warned == [
        f"WARNING: gateway: TESTING SWITCH token-binding: DEFENCE OFF — {DEFENCES['token-binding'][1]}",
        f"WARNING: service: TESTING SWITCH call-policy: DEFENCE OFF — {DEFENCES['call-policy'][1]}",
        f"WARNING: service: TESTING SWITCH service-mtls: DEFENCE OFF — {DEFENCES['service-mtls'][1]}",
    ]
    with pytest.raises(ConfigError):
        defences_off(config, "secrets", {})  # even one that honours none refuses


def test_up_refuses_before_starting_anything(tmp_path: Path) -> None:
    path = _declaration(tmp_path, "token-signature", "call-policy")
    state = tmp_path / "state"
    up = run_cli(
        "up", "--config", str(path), "--state", str(state), "--detach", env=_without_switches()
    )
    assert up.returncode == 2, up.stdout + up.stderr
    assert "token-signature, call-policy" in up.stderr
    assert f"{SWITCHES_ENV}=1" in up.stderr
    assert not state.exists()  # nothing was started, nothing written


def test_a_component_and_a_service_refuse_to_start(tmp_path: Path) -> None:
    path = _declaration(tmp_path, "token-format")
    argv = ["-m", "trustmesh.gateway", "--config", str(path), "--state", str(tmp_path)]
    gateway = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_without_switches(),
    )
    assert gateway.returncode == 2, gateway.stderr
    assert "testing.defences_off: test-only switches (token-format)" in gateway.stderr
    service = subprocess.run(
        [sys.executable, "-m", "trustmesh.sdk.runner", "trustmesh.demo.orders:app"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**_without_switches(), "TRUSTMESH_CONFIG": str(path), "TRUSTMESH_SERVICE": "orders"},
    )
    assert service.returncode == 1, service.stderr
    assert f"{SWITCHES_ENV}=1" in service.stderr


def test_the_helpers_write_a_section_the_loader_reads(tmp_path: Path) -> None:
    path = _declaration(tmp_path, "audit-chain", "request-framing")
    config = parse_config(path.read_text(encoding="utf-8"), source="t")
    assert config.testing is not None
    assert config.testing.defences_off == ["audit-chain", "request-framing"]
    assert switched_env()[SWITCHES_ENV] == "1"


@pytest.mark.parametrize(
    ("switch", "running"),
    [
        ("token-binding", ""),  # no gateway
        (
            "path-normalisation",
            RUNNING.replace("gateway:\n", 'gateway:\n  engine: nginx\n  waf: {mode: "off"}\n'),
        ),
        ("secrets-policy", RUNNING.replace("secrets: {}\n", "")),
    ],
)
def test_a_switch_of_what_the_declaration_does_not_run_is_refused(
    switch: str, running: str
) -> None:
    """A switch nothing consults would let a test pass with nothing off: refused, as is
    a gateway switch under the nginx engine (nginx parses and routes; only the Python
    engine is switched)."""
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + f"testing: {{defences_off: [{switch}]}}\n" + running, source="t")
    assert f"{switch!r} switches off a defence of" in info.value.detail
