"""``trustmesh config check|schema``: validate the declaration, print its JSON Schema.

Exit codes: 0 the declaration is valid, 2 bad config or bad usage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from trustmesh.config import config_json_schema, load_config, resolve_config_path
from trustmesh.errors import ConfigError

__all__ = ["app"]

EXIT_BAD_CONFIG = 2

app = typer.Typer(
    help="Check the declaration (trustmesh.yaml) and print its JSON Schema.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Declaration file [default: ./trustmesh.yaml if present, else the packaged default].",
        dir_okay=False,
    ),
]


@app.command("check")
def check(config: ConfigOption = None) -> None:
    """Validate the declaration; print every problem as file:line: key.path: what is wrong."""
    path = resolve_config_path(config)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        errors = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
        for problem in exc.problems:
            errors.print(problem)
        errors.print(f"{path}: {len(exc.problems)} problem(s) found", style="bold red")
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    from trustmesh.cli.policy_cmd import edge_policy_or_exit

    policy = edge_policy_or_exit(loaded, path.parent)
    if loaded.gateway is not None:  # each route's contract and rule set load, as the gateway's
        from trustmesh.gateway.crs import load_rule_sets
        from trustmesh.gateway.validation import load_validators

        try:
            load_validators(loaded.gateway, path.parent)
            load_rule_sets(loaded.gateway, path.parent)
        except ConfigError as exc:
            Console(stderr=True, soft_wrap=True, markup=False).print(f"{path}: {exc.detail}")
            raise typer.Exit(EXIT_BAD_CONFIG) from None
    out = Console(soft_wrap=True, markup=False, highlight=False)
    if loaded.gateway is not None and policy is None:
        out.print(
            "warning: gateway.policies is not set: each route admits whoever passes its "
            "authentication (declare Cedar policies to decide per role, claim and context)"
        )
    out.print(
        f"ok: {path}: trust domain {loaded.trust_domain}, "
        f"{len(loaded.services)} services, {len(loaded.calls)} calls"
    )


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of trustmesh.yaml (for editors and CI)."""
    typer.echo(json.dumps(config_json_schema(), indent=2))
