"""``trustmesh config check [--strict]|schema``: validate the declaration, print its JSON Schema.

``--strict`` also refuses what a declaration should not ship with
(:mod:`trustmesh.config.strict`): a service without a policy, a wildcard allow, a token or
SVID lifetime outside strict bounds. CI runs it on the shipped declaration (``make gates``).

Exit codes: 0 the declaration is valid, 2 bad config or bad usage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from trustmesh.config import (
    TrustmeshConfig,
    config_json_schema,
    load_config,
    resolve_config_path,
)
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


StrictOption = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Also refuse services without a policy, wildcard allows and lifetimes outside "
        "strict bounds.",
    ),
]


@app.command("check")
def check(config: ConfigOption = None, strict: StrictOption = False) -> None:
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
    if strict:
        _strict_or_exit(loaded, path)
    out = Console(soft_wrap=True, markup=False, highlight=False)
    if loaded.gateway is not None and policy is None:
        out.print(
            "warning: gateway.policies is not set: each route admits whoever passes its "
            "authentication (declare Cedar policies to decide per role, claim and context)"
        )
    out.print(
        f"ok: {path}: trust domain {loaded.trust_domain}, "
        f"{len(loaded.services)} services, {len(loaded.calls)} calls"
        + (" (strict)" if strict else "")
    )


def _strict_or_exit(loaded: TrustmeshConfig, path: Path) -> None:
    from trustmesh.config.strict import strict_problems

    names = loaded.gateway.policies if loaded.gateway is not None else []
    # read as the edge policies just were: they loaded, so each is a readable UTF-8 file
    texts = {name: (path.parent / name).read_text(encoding="utf-8") for name in names}
    problems = strict_problems(loaded, path.read_text(encoding="utf-8"), str(path), texts)
    if problems:
        errors = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
        for problem in problems:
            errors.print(f"strict: {problem}")
        errors.print(f"{path}: {len(problems)} problem(s) in strict mode", style="bold red")
        raise typer.Exit(EXIT_BAD_CONFIG)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of trustmesh.yaml (for editors and CI)."""
    typer.echo(json.dumps(config_json_schema(), indent=2))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="config")
