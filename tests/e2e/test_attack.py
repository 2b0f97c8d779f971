"""The demo shop under `trustmesh up`, attacked from outside: first DAST (schemathesis,
from the OpenAPI document the gateway enforces, as a signed-in customer: valid and
invalid requests to every operation — no 5xx, and every request the document forbids
refused at the edge); then `trustmesh attack`: every control holds, each with the audit
events that recorded its refusals; and with a defence switched off in the declaration
(reloaded into the running gateway), the control that needs it fails and the command
says so (exit 1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authrig import code_flow
from demorig import demo_copy, demo_credentials

from trustmesh.cli.attack_probes import CONTROLS
from trustmesh.cli.auth_cmd import admin_call
from trustmesh.config import load_config
from trustmesh.testing import run_cli as tm

pytestmark = pytest.mark.xdist_group("attack-stack")
REDIRECT = "https://shop.example/cb"


STARTED: dict[str, str] = {}  # what `up` printed (the demo users' credentials, once)


@pytest.fixture(scope="module")
def shop() -> Iterator[tuple[Path, Path]]:
    config = demo_copy("tma")
    root = config.parent
    state = root / "state"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    STARTED["up"] = up.stdout
    try:
        yield config, state
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


def _customer_token(config: Path, state: Path) -> str:
    """The demo's customer signed in at the provider (code + PKCE) as a web client the
    operator registers: an access token for the gateway."""
    password, _ = demo_credentials(STARTED["up"])["shopper"]
    declared = load_config(config)
    admin_call(
        declared, state, "POST", "/admin/v1/clients",
        {"client_id": "dast-web", "method": "none", "redirect_uris": [REDIRECT],
         "audiences": [declared.component_spiffe_id("gateway")]},
    )  # fmt: skip
    public = json.loads((state / "auth" / "endpoint.json").read_text())["public_url"]
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(state / "edge" / "ca.pem")
        tokens = code_flow(browser, public, "dast-web", REDIRECT, "shopper", password)
    return str(tokens["access_token"])


def test_dast_finds_no_server_error_and_no_hole_in_the_contract(shop: tuple[Path, Path]) -> None:
    """schemathesis, positive and negative, on every operation of shop.openapi.yaml
    through the gateway: never a 5xx; every request the document forbids refused (4xx)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode, openapi
    from schemathesis.checks import negative_data_rejection, not_a_server_error

    config, state = shop
    gateway = json.loads((state / "gateway" / "endpoint.json").read_text())["url"]
    headers = {"Authorization": f"Bearer {_customer_token(config, state)}"}
    schema = openapi.from_path(config.with_name("shop.openapi.yaml"))
    session = requests.Session()
    session.trust_env = False
    session.verify = str(state / "edge" / "ca.pem")
    seen: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6  # every operation the document lists

    def exercise(strategy: Any, checks: list[Any]) -> None:
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case: schemathesis.Case) -> None:
            response = case.call(
                base_url=gateway, session=session, headers=headers, verify=session.verify
            )
            seen[str(response.status_code)] = seen.get(str(response.status_code), 0) + 1
            case.validate_response(response, checks=checks, headers=headers)

        one()

    for operation in operations:
        exercise(operation.as_strategy(GenerationMode.POSITIVE), [not_a_server_error])
        if list(operation.iter_parameters()) or len(operation.body):  # something to break
            exercise(
                operation.as_strategy(GenerationMode.NEGATIVE),
                [not_a_server_error, negative_data_rejection],
            )
    assert not [status for status in seen if status.startswith("5")], seen
    assert "400" in seen, seen  # the negative cases met the contract at the edge


def _attack(config: Path, state: Path, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    ran = tm("attack", "--config", str(config), "--state", str(state), "--json", *args)
    assert ran.returncode in (0, 1), ran.stdout + ran.stderr
    return ran.returncode, {c["name"]: c for c in json.loads(ran.stdout)["controls"]}


def _stored(config: Path, state: Path, uid: str) -> bool:
    found = tm(
        "audit", "events", "--config", str(config), "--state", str(state), "--json",
        "--decision", "deny", "--limit", "1000",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    return uid in {json.loads(line)["metadata"]["uid"] for line in found.stdout.splitlines()}


def test_every_control_holds_with_its_evidence(shop: tuple[Path, Path], tmp_path: Path) -> None:
    config, state = shop
    report = tmp_path / "evidence.html"
    code, controls = _attack(config, state, "--report", str(report))
    assert list(controls) == list(CONTROLS)  # every control, in the order they ran
    failed = {name: c["observed"] for name, c in controls.items() if not c["passed"]}
    assert not failed
    assert code == 0
    # refused below HTTP (the TLS handshake; the HTTP parser): no request to record; and
    # the tampering, done to copies of the log, is found by verify, not recorded
    unrecorded = ("gateway-bypass-no-svid", "request-smuggling", "audit-tamper")
    recorded = [c for c in CONTROLS if c not in unrecorded]
    tamper = str(controls["audit-tamper"]["observed"])
    for kind in ("altered", "deleted", "truncated"):
        assert f"verify names {kind} at record" in tamper
    for name in recorded:
        ids = controls[name]["event_ids"]
        assert isinstance(ids, list)
        assert ids, f"{name}: no audit event"
    # the evidence is the audit log's own: each id names a deny event stored there
    some = [str(controls[name]["event_ids"][0]) for name in recorded]  # type: ignore[index]
    assert all(_stored(config, state, uid) for uid in some[:3])
    page = report.read_text()
    assert all(name in page for name in CONTROLS)
    assert f"{len(CONTROLS)} of {len(CONTROLS)} controls held" in page


def test_a_defence_switched_off_fails_its_control(shop: tuple[Path, Path]) -> None:
    """The injection filter off and the address limit removed, in the declaration the
    running gateway reloads: sql-injection, xss and rate-limit fail, and the command
    exits 1; the token checks, untouched, still hold."""
    config, state = shop
    original = config.read_text()
    weakened = original.replace(
        "  rate_limits:\n    - {per: ip, limit: 600/minute}\n", '  waf: {mode: "off"}\n'
    )
    assert weakened != original
    config.write_text(weakened)
    try:
        reloaded = tm("gateway", "reload", "--state", str(state))
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        only = ("sql-injection", "xss", "rate-limit", "token-forged")
        code, controls = _attack(config, state, *(f"--only={name}" for name in only))
        assert code == 1
        assert sorted(controls) == sorted(only)
        assert not controls["sql-injection"]["passed"]
        assert not controls["xss"]["passed"]
        assert not controls["rate-limit"]["passed"]
        assert "no per-address limit" in str(controls["rate-limit"]["observed"])
        assert controls["token-forged"]["passed"]
    finally:
        config.write_text(original)
        tm("gateway", "reload", "--state", str(state))


def test_nothing_to_attack_is_a_clear_error(tmp_path: Path) -> None:
    ran = tm("attack", "--state", str(tmp_path / "none"))
    assert ran.returncode == 2
    assert "no running gateway" in ran.stderr
