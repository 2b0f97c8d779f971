"""``trustmesh attack``: attack the running stack and report each control with its
evidence (:mod:`trustmesh.cli.attack_probes`). Exit 0 when every control held, 1 when one did
not, 2 when there is nothing to attack (no running stack) or the options are wrong."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trustmesh.cli._common import (
    DEFAULT_STATE,
    EXIT_FAILURE,
    EXIT_OK,
    ConfigOption,
    JsonOption,
    StateOption,
    fail_on,
    load_or_exit,
    out,
)
from trustmesh.cli.attack_probes import CONTROLS, Stack, run_attacks
from trustmesh.cli.attack_report import document, html_report
from trustmesh.config.switches import defences_off
from trustmesh.errors import TrustmeshError

__all__ = ["attack", "register"]


def attack(
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", dir_okay=False, help="Also write the HTML evidence report here."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Only this control (repeatable): {', '.join(CONTROLS)}."),
    ] = None,
) -> None:
    """Attack the running stack from outside: gateway bypass, forged and unsigned tokens,
    path traversal, SQL injection and XSS, request smuggling, a rate-limit flood. Each
    control is reported with the attack, what was observed and the audit events that
    recorded the refusal. Exit 1 when a control did not hold."""
    cfg, _ = load_or_exit(config)
    try:
        stack = Stack.find(cfg, state.absolute(), defences_off(cfg, "attack"))
        controls = asyncio.run(run_attacks(stack, only or ()))
    except TrustmeshError as exc:
        fail_on(exc)
    if report is not None:
        report.write_text(
            html_report(controls, trust_domain=cfg.trust_domain, target=stack.gateway)
        )
    if as_json:
        print(json.dumps(document(controls)))
    else:
        table = Table(title=f"trustmesh attack: {stack.gateway}")
        for column in ("control", "result", "attack", "observed", "events"):
            table.add_column(column, overflow="fold")
        for control in controls:
            result = "[green]held[/]" if control.passed else "[bold red]FAILED[/]"
            observed = control.observed  # whole in --json and the report
            if len(observed) > 240:
                observed = observed[:240] + "…"
            table.add_row(
                control.name, result, control.attack, observed, str(len(control.event_ids))
            )
        out.print(table)
        if report is not None:
            out.print(f"evidence report: {report}")
    raise typer.Exit(EXIT_OK if all(c.passed for c in controls) else EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)
