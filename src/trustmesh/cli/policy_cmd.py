"""``trustmesh policy test|schema``: run the edge policies' test cases; print the Cedar
schema generated from the declaration (what the policies are validated against).

Exit codes: 0 every case passed, 1 a case failed, 2 bad config, policies or cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from trustmesh.cli._common import ConfigOption, load_or_exit
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import ConfigError
from trustmesh.policy.cases import run_cases
from trustmesh.policy.edge import EdgePolicy, edge_schema, load_edge_policy
from trustmesh.reasons import Reason

__all__ = ["app", "edge_policy_or_exit"]

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

app = typer.Typer(
    help="The gateway's Cedar policies: test them, print their schema.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


def edge_policy_or_exit(cfg: TrustmeshConfig, cfg_dir: Path) -> EdgePolicy | None:
    """The validated edge policies, or exit 2 printing every problem."""
    try:
        return load_edge_policy(cfg, cfg_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem)
        err.print(f"{len(exc.problems)} problem(s) in the gateway's policies", style="bold red")
        raise typer.Exit(EXIT_BAD_CONFIG) from None


@app.command("test")
def run_tests(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run the cases kept next to each policy file (x.cedar → x.tests.yaml)."""
    cfg, path = load_or_exit(config)
    policy = edge_policy_or_exit(cfg, path.parent)
    if policy is None:
        err.print("no gateway.policies declared: nothing to test")
        raise typer.Exit(EXIT_BAD_CONFIG)
    try:
        results, missing = run_cases(policy, cfg, path.parent)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem)
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    failed = [r for r in results if not r.passed]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "passed": len(results) - len(failed),
                    "failed": len(failed),
                    "without_cases": missing,
                    "cases": [
                        {
                            "file": r.file,
                            "name": r.case.name,
                            "expected": r.case.expect,
                            "decision": "allow" if r.decision.allowed else "deny",
                            "reason": str(r.decision.reason),
                            "policies": list(r.decision.policies),
                            "passed": r.passed,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        for r in results:
            got = "allow" if r.decision.allowed else "deny"
            why = f" by {', '.join(r.decision.policies)}" if r.decision.policies else ""
            if r.decision.reason not in (Reason.POLICY_ALLOW, Reason.POLICY_DENY):
                why = f" ({r.decision.reason}: refused before any policy)"
            mark = "PASS" if r.passed else "FAIL"
            out.print(f"{mark}  {r.case.name}: {got}{why} (expected {r.case.expect})")
            if r.decision.error:
                out.print(f"      evaluation error: {r.decision.error}")
        for name in missing:
            err.print(f"warning: {name} has no test cases")
        out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command("schema")
def schema(config: ConfigOption = None) -> None:
    """Print the Cedar schema generated from the declaration's gateway section."""
    cfg, _ = load_or_exit(config)
    if cfg.gateway is None:
        err.print("no gateway: section in the declaration")
        raise typer.Exit(EXIT_BAD_CONFIG)
    typer.echo(edge_schema(cfg.gateway), nl=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="policy")
