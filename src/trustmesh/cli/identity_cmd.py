"""``trustmesh identity register|list|remove``, ``identity token create``, ``svid show``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trustmesh import crypto
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
from trustmesh.config import parse_duration
from trustmesh.errors import TrustmeshError, UsageError
from trustmesh.identity import admin
from trustmesh.identity.models import RegistrationEntry
from trustmesh.identity.server import open_store, service_settings
from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.spiffeid import parse_spiffe_id

app = typer.Typer(help="Workload registration entries and join tokens.", no_args_is_help=True)
token_app = typer.Typer(help="One-time join tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
svid_app = typer.Typer(help="Inspect issued X.509-SVIDs.", no_args_is_help=True)


@contextmanager
def _store(state: Path) -> Iterator[SqliteIdentityStore]:
    try:
        store = open_store(state)
    except TrustmeshError as exc:
        fail_on(exc)
    try:
        yield store
    finally:
        store.close()


def _ttl(value: str | None) -> dt.timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--ttl {value!r}: {exc}") from None


@app.command("register")
def register(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<trust-domain>/<path>")],
    selector: Annotated[
        list[str],
        typer.Option(
            "--selector",
            help="unix:uid:N, unix:gid:N, unix:user:NAME, unix:group:NAME, unix:path:/exe, "
            "unix:sha256:HEX. Repeat: a workload must present every one.",
        ),
    ],
    ttl: Annotated[
        str | None, typer.Option(help="SVID TTL, e.g. 10m (≤ identity.max_svid_ttl).")
    ] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Allow workloads presenting SELECTORs to hold SPIFFE-ID."""
    cfg, _ = load_or_exit(config)
    with _store(state) as store, cli_event_sink(state) as sink:
        try:
            entry = admin.register_entry(
                store, service_settings(cfg), spiffe_id, selector, _ttl(ttl), sink
            )
        except TrustmeshError as exc:
            fail_on(exc)
    if as_json:
        out.print_json(data=_entry_json(entry))
    else:
        out.print(f"entry {entry.id}: {entry.spiffe_id} ← {' '.join(sorted(entry.selectors))}")


def _entry_json(entry: RegistrationEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "selectors": sorted(entry.selectors),
        "ttl_seconds": int(entry.ttl.total_seconds()) if entry.ttl else None,
        "created_at": entry.created_at.isoformat(),
    }


@app.command("list")
def list_entries(state: StateOption = DEFAULT_STATE, as_json: JsonOption = False) -> None:
    """List registration entries."""
    with _store(state) as store:
        entries = store.list_entries()
    if as_json:
        out.print_json(data=[_entry_json(e) for e in entries])
        return
    table = Table("id", "SPIFFE ID", "selectors", "TTL")
    for e in entries:
        ttl = f"{int(e.ttl.total_seconds())}s" if e.ttl else "default"
        table.add_row(e.id, e.spiffe_id, "\n".join(sorted(e.selectors)), ttl)
    out.print(table)


@app.command("remove")
def remove(
    entry_id: Annotated[str, typer.Argument(help="Entry id (see `identity list`).")],
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Remove a registration entry; workloads holding only it lose their identity."""
    with _store(state) as store, cli_event_sink(state) as sink:
        try:
            entry = admin.remove_entry(store, entry_id, sink)
        except TrustmeshError as exc:
            fail_on(exc)
    out.print(f"removed entry {entry.id} ({entry.spiffe_id})")


@token_app.command("create")
def token_create(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="The identity the token grants.")],
    ttl: Annotated[str, typer.Option(help="How long the token may be redeemed.")] = "10m",
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Create a one-time join token (printed once on stdout; only its hash is stored)."""
    cfg, _ = load_or_exit(config)
    with _store(state) as store, cli_event_sink(state) as sink:
        try:
            lifetime = _ttl(ttl) or admin.DEFAULT_JOIN_TTL
            token = admin.create_join_token(store, service_settings(cfg), spiffe_id, lifetime, sink)
        except TrustmeshError as exc:
            fail_on(exc)
    print(token)  # plain stdout: scripts capture it


@svid_app.command("show")
def svid_show(
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://<trust-domain>/<path>")],
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
    pem: Annotated[bool, typer.Option("--pem", help="Print the certificate chain.")] = False,
) -> None:
    """Show the last X.509-SVID issued for SPIFFE-ID (public facts; never a key)."""
    try:
        parse_spiffe_id(spiffe_id)
    except UsageError as exc:
        fail_on(exc)
    with _store(state) as store:
        svid = store.last_svid(spiffe_id)
    if svid is None:
        fail(f"no SVID has been issued for {spiffe_id}", 1)
    chain = crypto.certs_from_pem(svid.chain_pem.encode())
    leaf = chain[0]
    facts = {
        "spiffe_id": svid.spiffe_id,
        "uri_sans": crypto.uri_sans(leaf),
        "serial": svid.serial,
        "not_before": svid.not_before.isoformat(),
        "not_after": svid.not_after.isoformat(),
        "issued_at": svid.issued_at.isoformat(),
        "expired": svid.not_after <= dt.datetime.now(dt.UTC),
        "issuer": leaf.issuer.rfc4514_string(),
        "sha256_fingerprint": crypto.fingerprint_sha256(leaf),
        "chain_length": len(chain),
    }
    if as_json:
        out.print_json(json.dumps({**facts, **({"chain_pem": svid.chain_pem} if pem else {})}))
        return
    table = Table(show_header=False)
    for key, value in facts.items():
        table.add_row(key, str(value))
    out.print(table)
    if pem:
        print(svid.chain_pem, end="")
