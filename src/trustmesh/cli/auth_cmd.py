"""``trustmesh auth``: OAuth clients and signing keys of the identity provider.

The commands work on the provider's database (``--state``; or ``auth.database``); a
running provider sees a change within seconds (clients are cached for 2 s, keys are
re-read every second)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from trustmesh import crypto
from trustmesh.auth.db import AuthStore, Client
from trustmesh.auth.keys import KeyState
from trustmesh.auth.server import database_url
from trustmesh.auth.service import AuthService, AuthSettings, hash_secret, new_secret
from trustmesh.cli._common import (
    DEFAULT_STATE,
    ConfigOption,
    JsonOption,
    StateOption,
    cli_event_sink,
    fail,
    fail_on,
    load_or_exit,
    out,
)
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError, UsageError
from trustmesh.identity.spiffeid import require_workload_id
from trustmesh.reasons import Reason
from trustmesh.store import create_engine

app = typer.Typer(
    help="The identity provider: OAuth clients and signing keys.", no_args_is_help=True
)
client_app = typer.Typer(
    help="OAuth clients (declared services are clients already).", no_args_is_help=True
)
app.add_typer(client_app, name="client")

METHODS = ("private_key_jwt", "client_secret_basic", "tls_client_auth")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JWK_KTYS = {"EC", "RSA", "OKP"}
T = TypeVar("T")


def _run(config: TrustmeshConfig, state: Path, work: Callable[[AuthService], Awaitable[T]]) -> T:
    async def main() -> T:
        store = AuthStore(create_engine(database_url(config, state)))
        try:
            with cli_event_sink(state) as sink:
                service = AuthService(
                    config,
                    store,
                    crypto.load_seal_key(state, dev=config.dev),
                    _settings(config),
                    sink,
                )
                await store.create()
                return await work(service)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except TrustmeshError as exc:
        fail_on(exc)


def _settings(config: TrustmeshConfig) -> AuthSettings:
    return AuthSettings(
        issuer=config.auth.issuer or "",
        token_ttl=int(config.auth.access_token_ttl.total_seconds()),
        publish_delay=int(config.auth.key_publish_delay.total_seconds()),
        rotate_every=int(config.auth.key_rotation.total_seconds()),
    )


def _audience(config: TrustmeshConfig, value: str) -> str:
    if value in config.services:
        return config.spiffe_id(value)
    if value.startswith("spiffe://"):
        return require_workload_id(value, config.trust_domain)
    raise UsageError(f"--audience {value!r}: expected a declared service or a SPIFFE ID")


def _jwks(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--jwks {path}: not a readable JSON file ({exc})") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise UsageError(f"--jwks {path}: expected a JWK Set with at least one key")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in _JWK_KTYS:
            raise UsageError(f"--jwks {path}: every key needs kty EC, RSA or OKP")
        if any(private in key for private in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise UsageError(f"--jwks {path}: holds private key material; give public keys only")
    return {"keys": keys}


@client_app.command("create")
def client_create(
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
    if not _CLIENT_ID.fullmatch(client_id):
        fail(f"client id {client_id!r}: expected 1-128 letters, digits, '.', '_', ':' or '-'", 2)
    if client_id in cfg.services:
        fail(f"client id {client_id!r}: declared services are clients already", 2)
    if method not in METHODS:
        fail(f"--method {method!r}: expected one of {', '.join(METHODS)}", 2)
    if (method == "private_key_jwt") != (jwks is not None):
        fail("--jwks is required with private_key_jwt, and only with it", 2)
    if (method == "tls_client_auth") != (spiffe_id is not None):
        fail("--spiffe-id is required with tls_client_auth, and only with it", 2)
    if not audience:
        fail("name at least one --audience", 2)
    scopes = tuple(scope or ())
    if any(not s or not s.isprintable() or " " in s or '"' in s or "\\" in s for s in scopes):
        fail("--scope: a scope is printable text without spaces, quotes or backslashes", 2)
    secret = new_secret() if method == "client_secret_basic" else None
    try:
        record = Client(
            client_id=client_id,
            auth_method=method,
            spiffe_id=require_workload_id(spiffe_id, cfg.trust_domain) if spiffe_id else None,
            secret_hash=hash_secret(secret) if secret else None,
            jwks=_jwks(jwks) if jwks else None,
            scopes=scopes,
            audiences=tuple(dict.fromkeys(_audience(cfg, a) for a in audience)),
            created_at=int(time.time()),
        )
    except UsageError as exc:
        fail_on(exc)

    async def create(service: AuthService) -> None:
        await service.store.add_client(record)
        service.emit(
            Reason.CLIENT_CREATED,
            f"OAuth client created ({method})",
            client_id=client_id,
            attributes={"audiences": " ".join(record.audiences)[:512]},
        )

    _run(cfg, state, create)
    if secret:
        out.print(f"client {client_id} created; its secret (shown once):", markup=False)
        print(secret)
    else:
        out.print(f"client {client_id} created ({method})", markup=False)


@client_app.command("list")
def client_list(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """List OAuth clients (never a secret)."""
    cfg, _ = load_or_exit(config)

    async def listing(service: AuthService) -> list[Client]:
        await service.store.sync_managed_clients(service.managed_clients())
        return await service.store.list_clients()

    clients = _run(cfg, state, listing)
    docs = [
        {
            "client_id": c.client_id,
            "auth_method": c.auth_method,
            "spiffe_id": c.spiffe_id,
            "audiences": list(c.audiences),
            "scopes": list(c.scopes),
            "managed": c.managed,
        }
        for c in clients
    ]
    if as_json:
        out.print_json(data=docs)
        return
    table = Table("client", "method", "SPIFFE ID", "audiences", "scopes", "declared")
    for d in docs:
        table.add_row(
            str(d["client_id"]),
            str(d["auth_method"]),
            str(d["spiffe_id"] or ""),
            "\n".join(d["audiences"]),  # type: ignore[arg-type]
            " ".join(d["scopes"]),  # type: ignore[arg-type]
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

    async def remove(service: AuthService) -> None:
        await service.store.remove_client(client_id)
        service.emit(Reason.CLIENT_REMOVED, "OAuth client removed", client_id=client_id)

    _run(cfg, state, remove)
    out.print(f"client {client_id} removed", markup=False)


def _key_rows(states: list[KeyState], now: int) -> list[dict[str, object]]:
    def iso(ts: int | None) -> str | None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts is not None else None

    return [
        {
            "kid": s.kid,
            "status": s.status(now),
            "signs_from": iso(s.activate_at),
            "retired_at": iso(s.retire_at),
            "removed_at": iso(s.remove_at),
        }
        for s in sorted(states, key=lambda s: s.created_at)
    ]


def _print_keys(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("kid", "status", "signs from", "leaves JWKS")
    for r in rows:
        table.add_row(
            str(r["kid"]), str(r["status"]), str(r["signs_from"]), str(r["removed_at"] or "")
        )
    out.print(table)


@app.command("keys")
def keys(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """The token-signing keys: published, active, retiring."""
    cfg, _ = load_or_exit(config)

    async def listing(service: AuthService) -> list[KeyState]:
        return [k.state for k in await service.store.keys()]

    _print_keys(_key_rows(_run(cfg, state, listing), int(time.time())), as_json)


@app.command("rotate-keys")
def rotate_keys(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """Publish a new signing key now; it signs after auth.key_publish_delay (every
    verifier's cached JWKS has it by then); the old key stays published until every token
    it signed has expired."""
    cfg, _ = load_or_exit(config)

    async def rotate(service: AuthService) -> list[KeyState]:
        await service.tick()  # the first key, if there is none yet, signs at once
        await service.tick(rotate=True)
        return [k.state for k in await service.store.keys()]

    _print_keys(_key_rows(_run(cfg, state, rotate), int(time.time())), as_json)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="auth")


__all__ = ["register"]
