"""The dependency audit gate: pip-audit over the locked set, and what its answer means.

pip-audit asks a vulnerability service (PyPI's JSON API by default, or OSV) about each
locked ``name==version``. Where the service cannot be reached, or knows none of the
packages (PyPI's JSON API behind a mirror answers 404 for each, which pip-audit reports as
a skipped dependency and then prints "No known vulnerabilities found"), nothing was
audited: this gate says so — status ``not-run`` — and never reports the set as clean.

Statuses, and the gate's exit code:

- ``clean`` (0): every locked package was audited and none has a known vulnerability;
- ``vulnerable`` (1): at least one has; each is listed with its ids and fixed versions;
- ``incomplete`` (0, or 1 when required): some packages were audited, none vulnerable, but
  the service could not audit the others (they are named);
- ``not-run`` (0, or 1 when required): the service was unreachable or audited nothing.

"Required" (``--require`` or ``TRUSTMESH_REQUIRE_AUDIT=1``) is for machines that reach a
vulnerability service; the default lets CI pass where none is reachable, with the gate
printing NOT RUN and why.
"""

from __future__ import annotations

import json
import subprocess  # nosec B404 # runs pip-audit, a fixed argv without a shell
import sys
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["AuditOutcome", "AuditStatus", "Vulnerable", "interpret", "run_pip_audit"]


class AuditStatus(StrEnum):
    CLEAN = "clean"
    VULNERABLE = "vulnerable"
    INCOMPLETE = "incomplete"
    NOT_RUN = "not-run"


@dataclass(frozen=True)
class Vulnerable:
    """One locked package with its known vulnerabilities."""

    name: str
    version: str
    ids: tuple[str, ...]
    fix_versions: tuple[str, ...]


@dataclass(frozen=True)
class AuditOutcome:
    status: AuditStatus
    why: str
    audited: int = 0
    skipped: tuple[str, ...] = ()
    vulnerable: tuple[Vulnerable, ...] = ()

    def exit_code(self, *, required: bool = False) -> int:
        if self.status is AuditStatus.VULNERABLE:
            return 1
        if self.status is AuditStatus.CLEAN:
            return 0
        return 1 if required else 0

    def lines(self) -> list[str]:
        """What the gate prints: the verdict first, then the details."""
        if self.status is AuditStatus.NOT_RUN:
            head = f"pip-audit: NOT RUN: {self.why} (no claim is made about vulnerabilities)"
        elif self.status is AuditStatus.INCOMPLETE:
            head = (
                f"pip-audit: INCOMPLETE: {self.audited} packages audited with no known "
                f"vulnerability; {len(self.skipped)} NOT audited: {self.why}"
            )
        elif self.status is AuditStatus.VULNERABLE:
            head = f"pip-audit: FAILED: {len(self.vulnerable)} locked packages are vulnerable"
        else:
            head = f"pip-audit: ok: no known vulnerabilities in {self.audited} locked packages"
        out = [head]
        out.extend(
            f"  {v.name}=={v.version}: {', '.join(v.ids)} "
            f"(fixed in: {', '.join(v.fix_versions) or 'no fixed version'})"
            for v in self.vulnerable
        )
        if self.status is AuditStatus.INCOMPLETE:
            out.extend(f"  not audited: {name}" for name in self.skipped)
        return out


def interpret(report: dict[str, Any] | None, returncode: int, stderr: str) -> AuditOutcome:
    """The outcome of one pip-audit run from its JSON report (``None`` when it wrote none),
    its exit code and the last of what it printed on stderr."""
    if report is None:
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        why = f"pip-audit exited {returncode} without a report"
        return AuditOutcome(AuditStatus.NOT_RUN, f"{why}: {last.strip()[:300]}" if last else why)
    deps = report.get("dependencies")
    if not isinstance(deps, list) or not all(isinstance(dep, dict) for dep in deps):
        return AuditOutcome(AuditStatus.NOT_RUN, "pip-audit's report has no dependency list")
    skipped: list[str] = []
    reasons: list[str] = []
    vulnerable: list[Vulnerable] = []
    audited = 0
    for dep in deps:
        name = str(dep.get("name", "?"))
        if "skip_reason" in dep:
            skipped.append(name)
            reasons.append(str(dep["skip_reason"]))
            continue
        audited += 1
        vulns = dep.get("vulns") or []
        if vulns:
            vulnerable.append(
                Vulnerable(
                    name=name,
                    version=str(dep.get("version", "?")),
                    ids=tuple(str(v.get("id", "?")) for v in vulns),
                    fix_versions=tuple(
                        dict.fromkeys(str(f) for v in vulns for f in v.get("fix_versions") or ())
                    ),
                )
            )
    skip_why = f"the service could not audit them (e.g. {reasons[0]!r})" if reasons else ""
    if vulnerable:
        status, why = AuditStatus.VULNERABLE, "known vulnerabilities"
    elif audited == 0:
        status = AuditStatus.NOT_RUN
        why = (
            f"the vulnerability service audited none of the {len(skipped)} packages: {skip_why}"
            if skipped
            else "the report lists no packages"
        )
    elif skipped:
        status, why = AuditStatus.INCOMPLETE, skip_why
    else:
        status, why = AuditStatus.CLEAN, "every package audited"
    return AuditOutcome(status, why, audited, tuple(skipped), tuple(vulnerable))


def run_pip_audit(
    lock: Path,
    *,
    service: str = "pypi",
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
) -> AuditOutcome:
    """Run pip-audit on the hashed lock (no resolution, no virtualenv: ``--disable-pip
    --no-deps``) and interpret its answer."""
    with tempfile.TemporaryDirectory(prefix="trustmesh-pip-audit-") as folder:
        out = Path(folder) / "report.json"
        argv = [
            sys.executable, "-m", "pip_audit",
            "--requirement", str(lock),
            "--disable-pip", "--no-deps",
            "--vulnerability-service", service,
            "--timeout", str(int(timeout)),
            "--progress-spinner", "off",
            "--format", "json", "--output", str(out),
        ]  # fmt: skip
        try:
            done = subprocess.run(  # noqa: S603  # nosec B603 # our own interpreter and fixed arguments
                argv, capture_output=True, text=True, timeout=timeout * 20, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return AuditOutcome(AuditStatus.NOT_RUN, f"pip-audit took over {timeout * 20:.0f}s")
        report: dict[str, Any] | None = None
        if out.is_file():
            try:
                loaded = json.loads(out.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                loaded = None
            report = loaded if isinstance(loaded, dict) else None
        return interpret(report, done.returncode, done.stderr)
