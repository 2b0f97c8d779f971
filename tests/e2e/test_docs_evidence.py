"""`trustmesh docs evidence` against `trustmesh up` (the demo shop): every item, with its
figures and the controls it maps to, read from the running stack as the operator; a
failed control in an attack report fails the attack item (exit 1); admins' MFA coverage
judged on the provider's real answer; and nothing secret (the admin's password and TOTP
secret that `up` printed, a key, a certificate, a token) in any format."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from demorig import demo_copy

from trustmesh.cli.attack_probes import CONTROLS
from trustmesh.cli.evidence import mfa_item
from trustmesh.testing import run_cli as tm

pytestmark = pytest.mark.xdist_group("docs-evidence-stack")

ITEMS = [
    "audit-log-integrity",
    "audit-key-age",
    "certificate-lifetimes",
    "identity-ca-age",
    "admin-mfa-coverage",
    "signing-key-age",
]


@dataclass(frozen=True)
class Shop:
    config: Path
    state: Path
    secrets: tuple[str, ...]  # what `up` printed once: never to be seen again


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    config = demo_copy("tmev")
    root = config.parent
    state = root / "state"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    printed = up.stdout + up.stderr
    secrets = re.findall(r"password:\s+(\S+)", printed) + re.findall(r"secret=([A-Z2-7]+)", printed)
    assert len(secrets) >= 2  # the admin's password and TOTP secret
    try:
        yield Shop(config, state, tuple(secrets))
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


def _evidence(shop: Shop, *args: str) -> tuple[int, str]:
    ran = tm("docs", "evidence", "--config", str(shop.config), "--state", str(shop.state), *args)
    assert ran.returncode in (0, 1), ran.stdout + ran.stderr
    return ran.returncode, ran.stdout


def _json(shop: Shop, *args: str) -> tuple[int, dict[str, Any]]:
    code, text = _evidence(shop, "--format", "json", *args)
    return code, json.loads(text)


def _nothing_secret(shop: Shop, text: str) -> None:
    for secret in shop.secrets:
        assert secret not in text
    assert "BEGIN" not in text  # no certificate, no key
    assert "otpauth" not in text
    assert re.search(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ", text) is None  # no JWT


def test_every_item_with_its_figures_and_controls(shop: Shop) -> None:
    code, doc = _json(shop)
    items = {item["name"]: item for item in doc["items"]}
    assert list(items) == ITEMS
    failed = {name: i["result"] for name, i in items.items() if not i["passed"]}
    assert not failed
    assert code == 0
    assert doc["passed"] is True
    audit = items["audit-log-integrity"]["figures"]
    assert audit["intact"] is True
    assert audit["records"] > 0
    svids = items["certificate-lifetimes"]["figures"]["svids"]
    names = {row["component"] for row in svids}
    assert {"auth", "gateway", "audit", "orders", "payments", "inventory"} <= names
    # identity.svid_ttl, backdated 10s; the identity service's own SVID is not on record
    on_record = {row["component"]: row["lifetime"] for row in svids if row["lifetime"]}
    assert set(on_record.values()) == {"1h10s"}
    assert names - set(on_record) <= {"discovery"}
    assert items["identity-ca-age"]["figures"]["max_age"] == "7d"
    assert items["admin-mfa-coverage"]["figures"]["admins"] >= 1
    (checkpoint_key,) = items["audit-key-age"]["figures"]["keys"]
    assert checkpoint_key["alg"] == "Ed25519"
    assert checkpoint_key["signing_since"] <= checkpoint_key["last_signed"]  # ISO, UTC
    assert items["signing-key-age"]["figures"]["max_age"] == "1d6m"
    assert len(items["signing-key-age"]["figures"]["active"]) == 1
    for item in doc["items"]:
        datetime.strptime(item["at"], "%Y-%m-%dT%H:%M:%SZ")
        assert item["checked"]
    # the mappings: each control, its text, the items that evidence it
    controls = {c["id"]: c for c in doc["controls"]}
    assert controls["PCI DSS 4.0 8.4.1"]["items"] == ["admin-mfa-coverage"]
    assert controls["PCI DSS 4.0 10.3.4"]["items"] == ["audit-log-integrity"]
    assert "certificate-lifetimes" in controls["NIST SP 800-207 tenet 2"]["items"]
    assert controls["NIST SP 800-207 tenet 2"]["text"].startswith("All communication is secured")
    assert "PCI DSS 4.0 req. 10" in {c["id"] for c in items["audit-log-integrity"]["controls"]}
    _nothing_secret(shop, json.dumps(doc))


def test_markdown_and_html_say_the_same(shop: Shop, tmp_path: Path) -> None:
    code, text = _evidence(shop)
    assert code == 0
    for name in ITEMS:
        assert f"| {name} | pass |" in text
    assert "| PCI DSS 4.0 8.4.1 |" in text
    page = tmp_path / "evidence.html"
    code, _ = _evidence(shop, "--format", "html", "--out", str(page))
    assert code == 0
    html = page.read_text()
    assert "<script" not in html
    assert "default-src 'none'" in html
    assert all(name in html for name in ITEMS)
    _nothing_secret(shop, text + html)


def test_an_attack_report_with_a_failed_control_fails_its_item(shop: Shop, tmp_path: Path) -> None:
    attacked = tm(
        "attack", "--config", str(shop.config), "--state", str(shop.state), "--json",
        "--only", "token-alg-none", "--only", "token-forged",
    )  # fmt: skip
    assert attacked.returncode == 0, attacked.stdout + attacked.stderr
    report = json.loads(attacked.stdout)
    held = tmp_path / "held.json"
    held.write_text(json.dumps(report))
    code, doc = _json(shop, "--attack-report", str(held))
    item = doc["items"][0]
    assert item["name"] == "attack-report"
    assert item["passed"] is True
    assert item["figures"]["held"] == 2
    assert code == 0
    for control in report["controls"]:
        if control["name"] == "token-forged":
            control["passed"] = False
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps(report))
    code, doc = _json(shop, "--attack-report", str(failed))
    item = doc["items"][0]
    assert item["passed"] is False
    assert item["figures"]["failed"] == ["token-forged"]
    assert "failed: token-forged" in item["result"]
    assert all(i["passed"] for i in doc["items"][1:])  # the stack's own items still hold
    assert doc["passed"] is False
    assert code == 1
    code, text = _evidence(shop, "--attack-report", str(failed))
    assert code == 1
    assert "| attack-report | FAIL |" in text


def test_a_report_that_is_not_one_is_bad_usage(shop: Shop, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a report"}')
    ran = tm(
        "docs", "evidence", "--config", str(shop.config), "--state", str(shop.state),
        "--attack-report", str(bad),
    )  # fmt: skip
    assert ran.returncode == 2
    assert "trustmesh attack --json" in ran.stderr


def test_the_provider_never_has_an_admin_without_mfa(shop: Shop) -> None:
    """The admin API enrols every admin in TOTP, whatever the request asks: an admin
    without MFA cannot be made through it. So the failing case is judged on the API's
    real answer with one admin's flag turned off — the same computation the command ran."""
    added = tm(
        "auth", "user", "add", "root2", "--role", "admin",
        "--config", str(shop.config), "--state", str(shop.state),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = tm(
        "auth", "user", "list", "--json", "--config", str(shop.config), "--state", str(shop.state)
    )
    assert listed.returncode == 0, listed.stderr
    users = json.loads(listed.stdout)
    root2 = next(u for u in users if u["username"] == "root2")
    assert root2["mfa"] is True  # asked without --mfa, enrolled all the same
    code, doc = _json(shop)
    coverage = next(i for i in doc["items"] if i["name"] == "admin-mfa-coverage")
    assert coverage["passed"] is True
    assert coverage["figures"]["admins"] >= 2
    assert code == 0
    now = datetime.now(UTC)
    assert mfa_item(users, now).passed
    root2["mfa"] = False
    judged = mfa_item(users, now)
    assert not judged.passed
    assert judged.figures["admins_without_mfa"] == ["root2"]
    assert "without: root2" in judged.result


def test_run_attack_adds_the_attack_item(shop: Shop) -> None:
    """Last in the module: the full attack floods the gateway from this address."""
    code, doc = _json(shop, "--run-attack")
    item = doc["items"][0]
    assert item["name"] == "attack-report"
    assert item["figures"]["controls"] == len(CONTROLS)
    assert item["passed"] is True, item["result"]
    assert [i["name"] for i in doc["items"][1:]] == ITEMS
    assert code == 0
    _nothing_secret(shop, json.dumps(doc))
