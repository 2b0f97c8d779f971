"""The secret-scanning gate: detect-secrets over the repository, against an audited baseline.

``.secrets.baseline`` lists every string detect-secrets flags in the tracked files, each
audited as not a secret (``"is_secret": false``): reason codes that name tokens, protocol
paths, public test vectors, values tests build at run time. The gate scans the tracked
files afresh and fails on any finding the baseline does not hold (a new string, or one
moved to another file), on any baseline entry marked a real secret, and on any entry
never audited.
"""

from __future__ import annotations

import json
import subprocess  # nosec B404 # runs detect-secrets, a fixed argv without a shell
import sys
from pathlib import Path
from typing import Any, Final

__all__ = ["BASELINE_EXCLUDE", "baseline_problems", "scan"]

#: The baseline itself holds hashes that look like secrets: it is never scanned.
BASELINE_EXCLUDE: Final = r"^\.secrets\.baseline$"


def _findings(document: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    results = document.get("results") or {}
    return {
        (file, str(r.get("hashed_secret")), str(r.get("type"))): r
        for file, found in results.items()
        for r in found
    }


def baseline_problems(baseline: dict[str, Any], scanned: dict[str, Any]) -> list[str]:
    """Why ``scanned`` (a fresh ``detect-secrets scan``) does not pass ``baseline``."""
    problems: list[str] = []
    known = _findings(baseline)
    for (file, _, kind), entry in sorted(known.items()):
        where = f"{file}:{entry.get('line_number')}"
        if entry.get("is_secret") is True:
            problems.append(f"{where}: {kind}: the baseline marks it a real secret: remove it")
        elif "is_secret" not in entry:
            problems.append(f"{where}: {kind}: in the baseline but never audited")
    for key, entry in sorted(_findings(scanned).items()):
        if key not in known:
            file, _, kind = key
            problems.append(
                f"{file}:{entry.get('line_number')}: {kind}: a potential secret the "
                "baseline does not hold (remove it, or audit it into .secrets.baseline)"
            )
    return problems


def scan(root: Path) -> dict[str, Any]:
    """A fresh ``detect-secrets scan`` of the files git tracks under ``root``."""
    done = subprocess.run(  # noqa: S603  # nosec B603 # our own interpreter, fixed arguments
        [sys.executable, "-m", "detect_secrets", "scan", "--exclude-files", BASELINE_EXCLUDE],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    document: dict[str, Any] = json.loads(done.stdout)
    return document
