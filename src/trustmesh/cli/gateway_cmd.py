"""``trustmesh gateway key add|list|revoke|rotate``: the gateway's API keys, through the
running gateway's admin API, as the operator (never its key store).

A key is printed once, when it is made or rotated; only its digest is stored, and
neither is ever listed. The gateway records every change as an event of its own; a
revoked key is refused at once by the gateway that revoked it, and within about a second
by any other gateway on the same store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from trustmesh.cli import _admin
from trustmesh.cli._common import (
    DEFAULT_STATE,
    ConfigOption,
    JsonOption,
    StateOption,
    err,
    fail,
    out,
    seconds_option,
)
from trustmesh.cli._common import (
    declared as _declared,
)
from trustmesh.cli.supervisor import RunPaths, hang_up, read_json, recorded_process
from trustmesh.errors import TrustmeshError, UnavailableError
from trustmesh.gateway.endpoint import endpoint_path, reload_path
from trustmesh.platform.endpoints import gateway_worker_name

app = typer.Typer(help="The edge gateway.", no_args_is_help=True)
key_app = typer.Typer(
    help="API keys: hashed at rest, scoped to routes, rotatable, revocable.",
    no_args_is_help=True,
)
app.add_typer(key_app, name="key")

KEYS = "/admin/v1/api-keys"


def _gateway(state: Path, config: Path | None, method: str, path: str, body: object = None) -> Any:
    """One request to the gateway's admin API as the operator, or exit. A declaration
    given with --config must be the running stack's (its trust domain)."""
    try:
        return _admin.call(state, "gateway", method, path, body, config=_declared(config))
    except TrustmeshError as exc:
        _admin.fail_admin(exc)


def _key_path(key_id: str, action: str) -> str:
    return f"{KEYS}/{quote(key_id, safe='')}/{action}"


def _short(iso: str | None) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ") if iso else ""


def _show_issued(doc: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        out.print_json(data={k: v for k, v in doc.items() if k != "routes_without_api_keys"})
        return
    err.print(f"key {doc['id']} ({doc['name']}) {what}; the key (shown once):", markup=False)
    print(doc["key"])  # plain stdout: scripts capture it


@key_app.command("add")
def key_add(
    name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="A gateway route the key may call: its name (route.name, else its path "
            "prefix), or '*' for all. Repeatable.",
        ),
    ],
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="A role of auth.roles the key's principal carries."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 90d (default: none).")
    ] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Make an API key for routes SCOPE. The key is printed once; only its hash is kept."""
    body: dict[str, object] = {"name": name, "scopes": scope, "roles": role or []}
    lifetime = seconds_option("--expires", expires)
    if lifetime is not None:
        body["expires_in"] = lifetime
    made = _gateway(state, config, "POST", KEYS, body)
    for route in made.get("routes_without_api_keys", []):
        err.print(
            f"warning: route {route} does not accept API keys (add api_key to its auth)",
            markup=False,
        )
    _show_issued(made, as_json, "added")


@key_app.command("list")
def key_list(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """List API keys (never a secret or a hash)."""
    docs = _gateway(state, config, "GET", KEYS)
    if as_json:
        out.print_json(data=docs)
        return
    table = Table()
    table.add_column("id", no_wrap=True)  # what revoke and rotate take: never cut
    for heading in ("name", "scopes", "roles", "status", "expires"):
        table.add_column(heading)
    for d in docs:
        status = d["status"]
        if status == "rotating" and d["previous_valid_until"]:
            status += f" (old key until {_short(d['previous_valid_until'])})"
        table.add_row(
            d["id"],
            d["name"],
            " ".join(d["scopes"]),
            " ".join(d["roles"]),
            status,
            _short(d["expires_at"]),
        )
    out.print(table)


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see `list`).")],
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: the gateway refuses it from now on."""
    doc = _gateway(state, config, "POST", _key_path(key_id, "revoke"), {})
    if as_json:
        out.print_json(data={k: v for k, v in doc.items() if k != "revoked_now"})
    elif doc["revoked_now"]:
        out.print(f"key {doc['id']} ({doc['name']}) revoked", markup=False)
    else:
        out.print(f"key {doc['id']} ({doc['name']}) was revoked already", markup=False)


@key_app.command("rotate")
def key_rotate(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see `list`).")],
    grace: Annotated[
        str,
        typer.Option("--grace", help="How long the old key stays valid: 0 (default) up to 7d."),
    ] = "0",
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Issue a new key for the same id, scopes and roles (printed once); the old one is
    refused after --grace."""
    body = {"grace": seconds_option("--grace", grace, zero=True) or 0}
    _show_issued(
        _gateway(state, config, "POST", _key_path(key_id, "rotate"), body), as_json, "rotated"
    )


@app.command("reload")
def reload(
    state: StateOption = DEFAULT_STATE,
    wait: Annotated[
        float, typer.Option("--wait", min=1, max=120, help="Seconds to wait for the answer.")
    ] = 10.0,
) -> None:
    """Apply the changed declaration to the running gateway without a restart: routes,
    edge policies, contracts, injection filters, control modes (dry-run → enforce), rate
    limits. A declaration that does not compile, or changes what only a restart applies,
    is refused and the running one stays (exit 1, with why). Every gateway process
    (``gateway.workers``) applies it."""
    try:
        outcome = signal_reload(state, wait)
    except TrustmeshError as exc:
        fail(exc.detail)
    if not outcome.get("ok"):
        fail(f"reload refused, the running declaration stays: {outcome.get('error')}")
    out.print("gateway: the declaration is applied", markup=False)


def signal_reload(state: Path, wait: float) -> dict[str, object]:
    """Tell every running gateway process to read its declaration again (``SIGHUP``),
    and return how it went: ``ok``, else the first refusal's ``error`` and its error's
    ``code``. UnavailableError when no gateway runs under ``state``, when one has not set
    its handler yet (it says where it listens once it has), or does not answer within
    ``wait`` seconds."""
    workers = _running_workers(state)
    if not workers:
        raise UnavailableError(f"no gateway is running under {state}")
    for worker, pid in workers.items():
        if (read_json(endpoint_path(state, worker)) or {}).get("pid") != pid:
            name = gateway_worker_name(worker)
            raise UnavailableError(f"{name} is starting: try again once it serves")
    answers = {
        gateway_worker_name(worker): (pid, reload_path(state, worker))
        for worker, pid in workers.items()
    }
    outcomes = hang_up(answers, wait).values()
    return next((o for o in outcomes if not o.get("ok")), {"ok": True})


def _running_workers(state: Path) -> dict[int, int]:
    """Every gateway process running under ``state``: worker number → pid."""
    found: dict[int, int] = {}
    for worker in range(1, 65):
        recorded = recorded_process(RunPaths(state).component(gateway_worker_name(worker)))
        if recorded is not None:
            found[worker] = recorded[0]
    return found


def register(parent: typer.Typer) -> None:
    from trustmesh.cli import gateway_dryrun_cmd

    app.add_typer(gateway_dryrun_cmd.app, name="dry-run")
    parent.add_typer(app, name="gateway")
