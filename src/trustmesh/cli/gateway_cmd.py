"""``trustmesh gateway key add|list|revoke|rotate``: the gateway's API keys.

The command writes the gateway's key store (``<state>/gateway/keys.db``) directly; a
running gateway sees a change within about a second. A key is printed once, when it is
made or rotated; only its digest is stored, and neither is ever listed. Every change is
recorded as an event in ``<state>/events/cli.jsonl``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from trustmesh.cli._common import (
    DEFAULT_STATE,
    EXIT_USAGE,
    ConfigOption,
    JsonOption,
    StateOption,
    cli_event_sink,
    err,
    fail,
    fail_on,
    load_or_exit,
    out,
)
from trustmesh.config import parse_duration
from trustmesh.errors import TrustmeshError, UsageError
from trustmesh.gateway.apikeys import IssuedKey, KeyRecord, principal_of, routes_without_api_keys
from trustmesh.gateway.keystore import (
    SqlKeyStore,
    add_key,
    keys_db_path,
    open_keystore,
    revoke_key,
    rotate_key,
)

app = typer.Typer(help="The edge gateway.", no_args_is_help=True)
key_app = typer.Typer(
    help="API keys: hashed at rest, scoped to routes, rotatable, revocable.",
    no_args_is_help=True,
)
app.add_typer(key_app, name="key")

T = TypeVar("T")


def _with_store(state: Path, action: Callable[[SqlKeyStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await open_keystore(state)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except TrustmeshError as exc:
        fail_on(exc)
    except (OSError, SQLAlchemyError) as exc:
        fail(f"the key store under {state} cannot be used: {type(exc).__name__}")


def _duration(option: str, value: str | None, *, zero: bool = False) -> timedelta | None:
    if value is None:
        return None
    if zero and value.strip() in ("0", "0s"):
        return timedelta(0)
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        fail_on(UsageError(f"{option} {value!r}: {exc}"))


def _time(epoch: int | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


def _short(epoch: int | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%MZ") if epoch else ""


def _doc(record: KeyRecord, now: float) -> dict[str, Any]:
    """What may be shown of a key: never its secret or a digest."""
    return {
        "id": record.key_id,
        "name": record.name,
        "principal": principal_of(record.key_id),
        "scopes": list(record.scopes),
        "roles": list(record.roles),
        "status": record.status(now),
        "created_at": _time(record.created_at),
        "expires_at": _time(record.expires_at),
        "revoked_at": _time(record.revoked_at),
        "rotated_at": _time(record.rotated_at),
        "previous_valid_until": _time(record.previous_until)
        if record.previous_until is not None and now < record.previous_until
        else None,
    }


def _show_issued(issued: IssuedKey, now: float, as_json: bool, what: str) -> None:
    record = issued.record
    if as_json:
        out.print_json(data={**_doc(record, now), "key": issued.key})
        return
    err.print(f"key {record.key_id} ({record.name}) {what}; the key (shown once):", markup=False)
    print(issued.key)  # plain stdout: scripts capture it


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
    cfg, _ = load_or_exit(config)
    lifetime = _duration("--expires", expires)
    now = time.time()

    async def action(store: SqlKeyStore) -> IssuedKey:
        with cli_event_sink(state) as sink:
            return await add_key(
                store,
                cfg,
                name=name,
                scopes=scope,
                roles=role or [],
                expires_in=lifetime,
                now=now,
                sink=sink,
            )

    issued = _with_store(state, action)
    routes = cfg.gateway.routes if cfg.gateway is not None else []
    for route in routes_without_api_keys(issued.record.scopes, routes):
        err.print(
            f"warning: route {route} does not accept API keys (add api_key to its auth)",
            markup=False,
        )
    _show_issued(issued, now, as_json, "added")


@key_app.command("list")
def key_list(state: StateOption = DEFAULT_STATE, as_json: JsonOption = False) -> None:
    """List API keys (never a secret or a hash)."""
    now = time.time()

    async def action(store: SqlKeyStore) -> list[KeyRecord]:
        return await store.all()

    records = _with_store(state, action) if keys_db_path(state).exists() else []
    docs = [_doc(r, now) for r in records]
    if as_json:
        out.print_json(data=docs)
        return
    table = Table()
    table.add_column("id", no_wrap=True)  # what revoke and rotate take: never cut
    for heading in ("name", "scopes", "roles", "status", "expires"):
        table.add_column(heading)
    for r, d in zip(records, docs, strict=True):
        status = d["status"]
        if status == "rotating" and r.previous_until is not None:
            status += f" (old key until {_short(r.previous_until)})"
        table.add_row(
            d["id"],
            d["name"],
            " ".join(d["scopes"]),
            " ".join(d["roles"]),
            status,
            _short(r.expires_at),
        )
    out.print(table)


def _missing(state: Path, key_id: str) -> None:
    if not keys_db_path(state).exists():
        fail(f"no API key {key_id!r} (no key store under {state})", EXIT_USAGE)


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see `list`).")],
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: a running gateway refuses it within about a second."""
    _missing(state, key_id)
    now = time.time()

    async def action(store: SqlKeyStore) -> tuple[KeyRecord, bool]:
        with cli_event_sink(state) as sink:
            return await revoke_key(store, key_id, now=now, sink=sink)

    record, newly = _with_store(state, action)
    if as_json:
        out.print_json(data=_doc(record, now))
    elif newly:
        out.print(f"key {record.key_id} ({record.name}) revoked", markup=False)
    else:
        out.print(f"key {record.key_id} ({record.name}) was revoked already", markup=False)


@key_app.command("rotate")
def key_rotate(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see `list`).")],
    grace: Annotated[
        str,
        typer.Option("--grace", help="How long the old key stays valid: 0 (default) up to 7d."),
    ] = "0",
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Issue a new key for the same id, scopes and roles (printed once); the old one is
    refused after --grace."""
    _missing(state, key_id)
    period = _duration("--grace", grace, zero=True) or timedelta(0)
    now = time.time()

    async def action(store: SqlKeyStore) -> IssuedKey:
        with cli_event_sink(state) as sink:
            return await rotate_key(store, key_id, grace=period, now=now, sink=sink)

    _show_issued(_with_store(state, action), now, as_json, "rotated")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="gateway")
