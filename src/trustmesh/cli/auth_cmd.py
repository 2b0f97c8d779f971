"""``trustmesh auth``: OAuth clients and signing keys of the identity provider, through
its admin API (never its stores directly).

The command acts as the operator: it takes the identity
``spiffe://<td>/trustmesh/operator`` with a one-time join token from the identity
service's operator socket (which needs the state directory's owner; see
:mod:`trustmesh.cli._admin`) and calls the running provider over mTLS. The provider
records every admin action as an event.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from trustmesh.auth.methods import CLIENT_METHODS
from trustmesh.cli import _admin as _admin_api
from trustmesh.cli._admin import AdminError as AdminError
from trustmesh.cli._common import (
    DEFAULT_STATE,
    ConfigOption,
    JsonOption,
    StateOption,
    fail,
    load_or_exit,
    out,
)
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError

app = typer.Typer(
    help="The identity provider: OAuth clients and signing keys.", no_args_is_help=True
)
client_app = typer.Typer(
    help="OAuth clients (declared services are clients already).", no_args_is_help=True
)
app.add_typer(client_app, name="client")
user_app = typer.Typer(help="Users of the identity provider.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def admin_call(
    config: TrustmeshConfig, state: Path, method: str, path: str, body: object = None
) -> Any:
    """One request to the provider's admin API as the operator; AdminError/TrustmeshError
    on failure."""
    return _admin_api.call(state, "auth", method, path, body, config=config)


def _admin(
    config: TrustmeshConfig, state: Path, method: str, path: str, body: object = None
) -> Any:
    try:
        return admin_call(config, state, method, path, body)
    except TrustmeshError as exc:
        _admin_api.fail_admin(exc)


_MethodOption = Annotated[
    str,
    typer.Option(
        "--method",
        help=f"Authentication: {', '.join(CLIENT_METHODS)} (none: a public client, "
        "a browser or native app; it needs --redirect-uri).",
    ),
]


@client_app.command("add")
def client_add(
    client_id: Annotated[str, typer.Argument(help="The client id (letters, digits, . _ : -).")],
    method: _MethodOption = "private_key_jwt",
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
    redirect_uri: Annotated[
        list[str] | None,
        typer.Option(
            "--redirect-uri",
            help="Where authorization codes go (repeatable; https, or http on a loopback "
            "address); lets the client sign users in with code + PKCE.",
        ),
    ] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Register an OAuth client. With --redirect-uri it signs users in (authorization code
    + PKCE, refresh tokens); a confidential client also gets tokens of its own (client
    credentials, token exchange). For client_secret_basic, the secret is printed once
    (only its hash is stored)."""
    cfg, _ = load_or_exit(config)
    body: dict[str, Any] = {
        "client_id": client_id,
        "method": method,
        "audiences": list(audience or []),
        "scopes": list(scope or []),
        "redirect_uris": list(redirect_uri or []),
    }
    if jwks is not None:
        body["jwks"] = _jwks_file(jwks)
    if spiffe_id is not None:
        body["spiffe_id"] = spiffe_id
    made = _admin(cfg, state, "POST", "/admin/v1/clients", body)
    secret = made.get("client_secret")
    if secret:
        out.print(f"client {client_id} added; its secret (shown once):", markup=False)
        print(secret)
    else:
        out.print(f"client {client_id} added ({method})", markup=False)


def _jwks_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"--jwks {path}: not a readable JSON file ({exc})", 2)


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
    table = Table(
        "client", "method", "SPIFFE ID", "audiences", "scopes", "redirect URIs", "declared"
    )
    for d in docs:
        table.add_row(
            d["client_id"],
            d["auth_method"],
            d["spiffe_id"] or "",
            "\n".join(d["audiences"]),
            " ".join(d["scopes"]),
            "\n".join(d["redirect_uris"]),
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


def _password(from_stdin: bool) -> dict[str, str]:
    """The password part of a request body: read from stdin, or none (one is generated)."""
    return {"password": sys.stdin.readline().rstrip("\n")} if from_stdin else {}


def _show_generated_password(doc: dict[str, Any]) -> None:
    if "password" in doc:
        out.print("password (shown once):", markup=False)
        print(doc["password"])


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="The login name.")],
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role", help="A role of auth.roles (repeatable); default: the first one listed."
        ),
    ] = None,
    mfa: Annotated[
        bool, typer.Option("--mfa", help="Enroll TOTP now (always for admins).")
    ] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Add a user. Without --password-stdin a password is generated and printed once; an
    admin (or --mfa) gets a TOTP secret, printed once as an otpauth:// URI."""
    cfg, _ = load_or_exit(config)
    body: dict[str, Any] = {"username": username, "mfa": mfa}
    if role:  # unset: the first role auth.roles declares
        body["roles"] = list(role)
    body.update(_password(password_stdin))
    made = _admin(cfg, state, "POST", "/admin/v1/users", body)
    out.print(f"user {made['username']} added (roles: {', '.join(made['roles'])})", markup=False)
    _show_generated_password(made)
    if "totp_uri" in made:
        out.print("TOTP enrolment (shown once; add it to an authenticator app):", markup=False)
        print(made["totp_uri"])


@user_app.command("list")
def user_list(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """List users (never a password or an MFA secret)."""
    cfg, _ = load_or_exit(config)
    docs = _admin(cfg, state, "GET", "/admin/v1/users")
    if as_json:
        out.print_json(data=docs)
        return
    table = Table("user", "roles", "MFA", "locked")
    for d in docs:
        table.add_row(
            d["username"],
            " ".join(d["roles"]),
            "yes" if d["mfa"] else "",
            "yes" if d["locked"] else "",
        )
    out.print(table)


def _user_action(action: str, help_text: str) -> None:
    def command(
        username: Annotated[str, typer.Argument(help="The login name.")],
        config: ConfigOption = None,
        state: StateOption = DEFAULT_STATE,
    ) -> None:
        cfg, _ = load_or_exit(config)
        done = _admin(cfg, state, "POST", f"/admin/v1/users/{quote(username, safe='')}/{action}")
        out.print(f"user {done['username']}: {action} done", markup=False)
        if "totp_uri" in done:
            out.print("new TOTP enrolment (shown once):", markup=False)
            print(done["totp_uri"])

    command.__doc__ = help_text
    user_app.command(action)(command)


_user_action("lock", "Lock a user out (no login until unlocked); their tokens are revoked.")
_user_action("unlock", "Let a locked user log in again.")
_user_action(
    "reset-mfa",
    "Replace a user's TOTP secret (the old one stops working); their tokens are revoked.",
)


@user_app.command("set-password")
def user_set_password(
    username: Annotated[str, typer.Argument(help="The login name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the new password from stdin.")
    ] = False,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Set a user's password; their tokens are revoked. Without --password-stdin a
    password is generated and printed once."""
    cfg, _ = load_or_exit(config)
    path = f"/admin/v1/users/{quote(username, safe='')}/password"
    done = _admin(cfg, state, "POST", path, _password(password_stdin))
    out.print(f"user {done['username']}: password set; their tokens are revoked", markup=False)
    _show_generated_password(done)


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
