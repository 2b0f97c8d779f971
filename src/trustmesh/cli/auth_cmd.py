"""``trustmesh auth``: OAuth clients and signing keys of the identity provider, through
its admin API (never its stores directly).

The command acts as the operator: it takes the identity
``spiffe://<td>/trustmesh/operator`` with a one-time join token (which needs the state
directory) and calls the running provider over mTLS. The provider records every admin
action as an event.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trustmesh.auth.__main__ import endpoint_path
from trustmesh.cli._common import (
    DEFAULT_STATE,
    ConfigOption,
    JsonOption,
    StateOption,
    fail,
    fail_on,
    load_or_exit,
    out,
)
from trustmesh.cli.call_cmd import as_workload
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError
from trustmesh.sdk.client import ServiceClient

app = typer.Typer(
    help="The identity provider: OAuth clients and signing keys.", no_args_is_help=True
)
client_app = typer.Typer(
    help="OAuth clients (declared services are clients already).", no_args_is_help=True
)
app.add_typer(client_app, name="client")

METHODS = ("private_key_jwt", "client_secret_basic", "tls_client_auth")


def _admin(
    config: TrustmeshConfig, state: Path, method: str, path: str, body: object = None
) -> Any:
    try:
        endpoint = json.loads(endpoint_path(state).read_text())
        url = str(endpoint["url"])
    except (OSError, ValueError, KeyError, TypeError):
        fail(f"the identity provider is not running for {state} (start it with `trustmesh up`)")

    async def call() -> Any:
        operator, auth = config.component_spiffe_id("operator"), config.component_spiffe_id("auth")
        async with (
            as_workload(config, state, operator) as tls,
            ServiceClient(tls, url, auth, retries=0) as client,
        ):
            response = await client.request(method, path, json=body)
        if response.status >= 400:
            try:
                doc = response.json()
                message = f"{doc.get('message') or doc.get('error')}"
            except ValueError:
                message = f"HTTP {response.status}"
            code = 2 if response.status in (400, 404, 409) else 1
            fail(message, code)
        return response.json() if response.body else None

    try:
        return asyncio.run(call())
    except TrustmeshError as exc:
        fail_on(exc)


@client_app.command("add")
def client_add(
    client_id: Annotated[str, typer.Argument(help="The client id (letters, digits, . _ : -).")],
    method: Annotated[
        str, typer.Option("--method", help=f"Authentication: {', '.join(METHODS)}.")
    ] = "private_key_jwt",
    jwks: Annotated[
        Path | None, typer.Option("--jwks", help="JWK Set file (private_key_jwt).", dir_okay=False)
    ] = None,
    spiffe_id: Annotated[
        str | None,
        typer.Option("--spiffe-id", help="The certificate's SPIFFE ID (tls_client_auth)."),
    ] = None,
    audience: Annotated[
        list[str] | None,
        typer.Option("--audience", help="A service the client may get tokens for (repeatable)."),
    ] = None,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="A scope it may ask for (repeatable).")
    ] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Register an OAuth client. For client_secret_basic, the secret is printed once (only
    its hash is stored)."""
    cfg, _ = load_or_exit(config)
    body: dict[str, Any] = {
        "client_id": client_id,
        "method": method,
        "audiences": list(audience or []),
        "scopes": list(scope or []),
    }
    if jwks is not None:
        try:
            body["jwks"] = json.loads(jwks.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--jwks {jwks}: not a readable JSON file ({exc})", 2)
    if spiffe_id is not None:
        body["spiffe_id"] = spiffe_id
    made = _admin(cfg, state, "POST", "/admin/v1/clients", body)
    secret = made.get("client_secret")
    if secret:
        out.print(f"client {client_id} added; its secret (shown once):", markup=False)
        print(secret)
    else:
        out.print(f"client {client_id} added ({method})", markup=False)


@client_app.command("list")
def client_list(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """List OAuth clients (never a secret)."""
    cfg, _ = load_or_exit(config)
    docs = _admin(cfg, state, "GET", "/admin/v1/clients")
    if as_json:
        out.print_json(data=docs)
        return
    table = Table("client", "method", "SPIFFE ID", "audiences", "scopes", "declared")
    for d in docs:
        table.add_row(
            d["client_id"],
            d["auth_method"],
            d["spiffe_id"] or "",
            "\n".join(d["audiences"]),
            " ".join(d["scopes"]),
            "yes" if d["managed"] else "",
        )
    out.print(table)


@client_app.command("remove")
def client_remove(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Remove a registered client; it cannot get tokens within seconds (issued tokens live
    until they expire: revoke them to stop them sooner)."""
    cfg, _ = load_or_exit(config)
    _admin(cfg, state, "DELETE", f"/admin/v1/clients/{client_id}")
    out.print(f"client {client_id} removed", markup=False)


def _print_keys(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("kid", "status", "signs from", "leaves JWKS")
    for r in rows:
        table.add_row(r["kid"], r["status"], str(r["signs_from"]), str(r["removed_at"] or ""))
    out.print(table)


@app.command("keys")
def keys(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """The token-signing keys: published, active, retiring."""
    cfg, _ = load_or_exit(config)
    _print_keys(_admin(cfg, state, "GET", "/admin/v1/keys"), as_json)


@app.command("rotate-keys")
def rotate_keys(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """Publish a new signing key now; it signs after auth.key_publish_delay (every
    verifier's cached JWKS has it by then); the old key stays published until every token
    it signed has expired."""
    cfg, _ = load_or_exit(config)
    _print_keys(_admin(cfg, state, "POST", "/admin/v1/keys/rotate"), as_json)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="auth")
