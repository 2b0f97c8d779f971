"""``trustmesh down``: stop everything ``up`` started. A module of its own, so that the
command imports what stopping needs and nothing of starting."""

from __future__ import annotations

import typer

from trustmesh.cli._common import DEFAULT_STATE, StateOption, err, out
from trustmesh.cli.supervisor import stop_stack

__all__ = ["down", "register"]


def down(state: StateOption = DEFAULT_STATE) -> None:
    """Stop everything that `up` started; no process remains."""
    was = stop_stack(state.absolute(), lambda m: err.print(m, markup=False))
    out.print("stopped." if was else "trustmesh was not running.")


def register(app: typer.Typer) -> None:
    app.command("down")(down)
