"""The dependency audit gate: a service that cannot be reached is "not run", never clean;
a vulnerability in pip-audit's JSON report fails the gate."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from trustmesh.devsecops.depaudit import AuditStatus, interpret, run_pip_audit

HERE = Path(__file__).parent
LOCK = HERE.parents[1] / "requirements.lock"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: a connection to it is refused


def _one_package_lock(tmp_path: Path) -> Path:
    """The lock's pin of idna, hashes and all."""
    text = LOCK.read_text(encoding="utf-8")
    match = re.search(r"^idna==\S+(?: \\\n\s+--hash=\S+)+", text, re.MULTILINE)
    assert match is not None
    path = tmp_path / "one.lock"
    path.write_text(match[0] + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("service", ["pypi", "osv"])
def test_an_unreachable_service_is_not_run(tmp_path: Path, service: str) -> None:
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(HTTPS_PROXY=proxy, https_proxy=proxy, HTTP_PROXY=proxy, http_proxy=proxy)
    outcome = run_pip_audit(_one_package_lock(tmp_path), service=service, timeout=5, env=env)
    assert outcome.status is AuditStatus.NOT_RUN
    assert "exited 1 without a report" in outcome.why
    head = outcome.lines()[0]
    assert head.startswith("pip-audit: NOT RUN: ")
    assert "no known vulnerabilities" not in " ".join(outcome.lines()).lower()
    assert outcome.exit_code() == 0
    assert outcome.exit_code(required=True) == 1


def test_a_vulnerable_package_fails_the_gate() -> None:
    report = json.loads((HERE / "pip_audit_vulnerable.json").read_text(encoding="utf-8"))
    outcome = interpret(report, 1, "")
    assert outcome.status is AuditStatus.VULNERABLE
    assert outcome.exit_code() == 1
    assert [(v.name, v.version, v.ids, v.fix_versions) for v in outcome.vulnerable] == [
        ("jinja2", "3.1.2", ("GHSA-h5c8-rqwp-cp95",), ("3.1.3",))
    ]
    lines = outcome.lines()
    assert lines[0] == "pip-audit: FAILED: 1 locked packages are vulnerable"
    assert "  jinja2==3.1.2: GHSA-h5c8-rqwp-cp95 (fixed in: 3.1.3)" in lines


def test_a_service_that_knows_no_package_is_not_run_not_clean() -> None:
    """What pip-audit answers behind a mirror without PyPI's JSON API: every package
    skipped, and on its own output "No known vulnerabilities found"."""
    skip = "Dependency not found on PyPI and could not be audited: {} ({})"
    report = {
        "dependencies": [
            {"name": n, "skip_reason": skip.format(n, v)}
            for n, v in [("idna", "3.21"), ("h11", "0.16.0")]
        ],
        "fixes": [],
    }
    outcome = interpret(report, 0, "No known vulnerabilities found")
    assert outcome.status is AuditStatus.NOT_RUN
    assert outcome.lines()[0].startswith(
        "pip-audit: NOT RUN: the vulnerability service audited none of the 2 packages"
    )
    assert outcome.exit_code() == 0
    assert outcome.exit_code(required=True) == 1


def test_clean_only_when_every_package_was_audited() -> None:
    audited = [{"name": "idna", "version": "3.21", "vulns": []}]
    clean = interpret({"dependencies": audited, "fixes": []}, 0, "")
    assert clean.status is AuditStatus.CLEAN
    assert clean.lines() == ["pip-audit: ok: no known vulnerabilities in 1 locked packages"]
    skipped = {"name": "h11", "skip_reason": "Dependency not found on PyPI"}
    partial = interpret({"dependencies": [*audited, skipped], "fixes": []}, 0, "")
    assert partial.status is AuditStatus.INCOMPLETE
    assert partial.lines()[-1] == "  not audited: h11"
    assert partial.exit_code(required=True) == 1


def test_a_report_that_is_not_one_is_not_run() -> None:
    assert interpret(None, 2, "boom\nTraceback ...\nConnectionError: refused\n").why == (
        "pip-audit exited 2 without a report: ConnectionError: refused"
    )
    assert interpret({"dependencies": "x"}, 0, "").status is AuditStatus.NOT_RUN
    assert interpret({"dependencies": ["idna"]}, 0, "").status is AuditStatus.NOT_RUN
