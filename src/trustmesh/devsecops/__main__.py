"""``python -m trustmesh.devsecops audit|sbom-check|secrets-check``: the gates' verdicts (exit 1 fails)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trustmesh.devsecops.depaudit import run_pip_audit
from trustmesh.devsecops.sbom import check_file
from trustmesh.devsecops.secretscan import baseline_problems, scan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustmesh.devsecops")
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit", help="pip-audit over a hashed lock")
    audit.add_argument("lock", type=Path)
    audit.add_argument("--service", choices=["pypi", "osv"], default="pypi")
    audit.add_argument("--timeout", type=float, default=15.0)
    audit.add_argument(
        "--require",
        action="store_true",
        default=os.environ.get("TRUSTMESH_REQUIRE_AUDIT") == "1",
        help="fail when the audit could not run (default: TRUSTMESH_REQUIRE_AUDIT=1)",
    )
    sbom = sub.add_parser("sbom-check", help="check a CycloneDX SBOM against the lock")
    sbom.add_argument("sbom", type=Path)
    sbom.add_argument("lock", type=Path)
    secrets = sub.add_parser("secrets-check", help="detect-secrets against the baseline")
    secrets.add_argument("baseline", type=Path)
    args = parser.parse_args(argv)
    if args.command == "secrets-check":
        return _secrets_check(args.baseline)
    if args.command == "audit":
        outcome = run_pip_audit(args.lock, service=args.service, timeout=args.timeout)
        for line in outcome.lines():
            print(line)
        return outcome.exit_code(required=args.require)
    problems = check_file(args.sbom, args.lock)
    for problem in problems:
        print(f"sbom: {args.sbom}: {problem}")
    if not problems:
        print(f"sbom: ok: {args.sbom} is CycloneDX JSON with every locked package once")
    return 1 if problems else 0


def _secrets_check(baseline_path: Path) -> int:
    baseline = json.loads(baseline_path.read_text(encoding="utf-8"))
    problems = baseline_problems(baseline, scan(baseline_path.resolve().parent))
    for problem in problems:
        print(f"detect-secrets: {problem}")
    if not problems:
        count = sum(len(found) for found in baseline["results"].values())
        print(f"detect-secrets: ok: no secret beyond the {count} audited in {baseline_path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
