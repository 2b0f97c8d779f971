"""``trustmesh audit prune [--dry-run]``: remove the audit records past their class's
retention now, through the running collector (as the operator): it signs a prune
checkpoint for what it removes, so ``trustmesh audit verify`` still passes — see
:mod:`trustmesh.audit.retention`. Registered on ``trustmesh audit`` by
:func:`register_prune`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from trustmesh.cli import _admin
from trustmesh.cli._common import DEFAULT_STATE, ConfigOption, JsonOption, StateOption, out
from trustmesh.cli._common import declared as _declared
from trustmesh.errors import TrustmeshError

__all__ = ["prune", "register_prune"]


def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove the records past their class's retention now (the collector also does it
    every audit.retention.interval), under a signed prune checkpoint; per class, what
    was (with --dry-run: would be) removed."""
    try:
        result: dict[str, Any] = _admin.call(
            state, "audit", "POST", "/v1/prune", {"dry_run": dry_run}, config=_declared(config)
        )
    except TrustmeshError as exc:
        _admin.fail_admin(exc)
    if as_json:
        print(json.dumps(result))
        return
    verb = "would remove" if result["dry_run"] else "removed"
    span = f" (seqs {result['first_seq']}..{result['last_seq']})" if result["total"] else ""
    out.print(f"{verb} {result['total']} audit records{span}", markup=False)
    for uid, count in result["removed"].items():
        out.print(f"  class {uid}: {count}", markup=False)
    if not result["dry_run"] and result["total"]:
        out.print(
            f"{result['prune_checkpoints']} prune checkpoints signed; rule: {result['rule']}",
            markup=False,
        )


def register_prune(app: typer.Typer) -> None:
    """Add ``prune`` to the ``trustmesh audit`` command group ``app``."""
    app.command("prune")(prune)
