"""``trustmesh identity register|list|remove``, ``identity token create``, ``svid show``,
``identity suspend|unsuspend|suspensions``: through the running identity service's admin
API, as the operator (never its store)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer
from cryptography import x509
from rich.table import Table

from trustmesh import crypto
from trustmesh.cli import _admin
from trustmesh.cli._common import (
    DEFAULT_STATE,
    ConfigOption,
    JsonOption,
    StateOption,
    err,
    fail,
    fail_on,
    out,
    seconds_option,
)
from trustmesh.cli._common import (
    declared as _declared,
)
from trustmesh.errors import TrustmeshError, UsageError
from trustmesh.spiffeid import parse_spiffe_id

app = typer.Typer(help="Workload registration entries and join tokens.", no_args_is_help=True)
token_app = typer.Typer(help="One-time join tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
svid_app = typer.Typer(help="Inspect issued X.509-SVIDs.", no_args_is_help=True)

#: A join token is valid this long unless --ttl says otherwise.
DEFAULT_JOIN_TTL = "10m"
SUSPENSIONS = "/admin/v1/suspensions"


def _identity(state: Path, config: Path | None, method: str, path: str, body: object = None) -> Any:
    """One request to the identity service's admin API as the operator, or exit. A declaration
    given with --config must be the running stack's (its trust domain)."""
    try:
        return _admin.call(state, "identity", method, path, body, config=_declared(config))
    except TrustmeshError as exc:
        _admin.fail_admin(exc)


def _entry_json(doc: dict[str, Any]) -> dict[str, object]:
    return {
        "id": doc["id"],
        "spiffe_id": doc["spiffe_id"],
        "selectors": doc["selectors"],
        "ttl_seconds": doc["ttl"],
        "created_at": doc["created_at"],
    }


@app.command("register")
def register_entry(
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
    body: dict[str, object] = {"spiffe_id": spiffe_id, "selectors": selector}
    seconds = seconds_option("--ttl", ttl)
    if seconds is not None:
        body["ttl"] = seconds
    entry = _identity(state, config, "POST", "/admin/v1/entries", body)
    if as_json:
        out.print_json(data=_entry_json(entry))
    else:
        selectors = " ".join(entry["selectors"])
        out.print(f"entry {entry['id']}: {entry['spiffe_id']} ← {selectors}", markup=False)


@app.command("list")
def list_entries(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """List registration entries."""
    entries = _identity(state, config, "GET", "/admin/v1/entries")
    if as_json:
        out.print_json(data=[_entry_json(e) for e in entries])
        return
    table = Table("id", "SPIFFE ID", "selectors", "TTL")
    for e in entries:
        ttl = f"{e['ttl']}s" if e["ttl"] else "default"
        table.add_row(e["id"], e["spiffe_id"], "\n".join(e["selectors"]), ttl)
    out.print(table)


@app.command("remove")
def remove(
    entry_id: Annotated[str, typer.Argument(help="Entry id (see `identity list`).")],
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Remove a registration entry; workloads holding only it lose their identity."""
    path = f"/admin/v1/entries/{quote(entry_id, safe='')}"
    entry = _identity(state, config, "DELETE", path)
    out.print(f"removed entry {entry['id']} ({entry['spiffe_id']})", markup=False)


@token_app.command("create")
def token_create(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="The identity the token grants.")],
    ttl: Annotated[
        str, typer.Option(help="How long the token may be redeemed.")
    ] = DEFAULT_JOIN_TTL,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Create a one-time join token (printed once on stdout; only its hash is stored)."""
    body = {"spiffe_id": spiffe_id, "ttl": seconds_option("--ttl", ttl)}
    made = _identity(state, config, "POST", "/admin/v1/join-tokens", body)
    print(made["token"])  # plain stdout: scripts capture it


@app.command("server-cert")
def server_cert(
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Where to write server.crt, server.key (0600) and ca.crt."),
    ],
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="A host name clients dial (repeatable).")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="An IP address clients dial (repeatable).")
    ] = None,
    ttl: Annotated[str, typer.Option(help="How long the certificate is valid.")] = "30d",
    renew_within: Annotated[
        str | None,
        typer.Option(
            "--renew-within",
            help="Only when the certificate in --out (for these names) expires within this "
            "time, or is missing: what a daily cron job runs. Says whether it renewed.",
        ),
    ] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Issue a TLS server certificate from the workload CA for a server the components
    connect to (the shared PostgreSQL with sslmode=verify-full, Redis over rediss://).
    The key is made here and never leaves this machine; run again to renew."""
    window = seconds_option("--renew-within", renew_within)
    if window is not None and _not_due(out_dir, dns or [], ip or [], window, as_json=as_json):
        return
    key = crypto.generate_key()
    body = {
        "csr": crypto.certificate_request(key, (dns or ip or ["server"])[0]).decode("ascii"),
        "dns_names": dns or [],
        "ip_addresses": ip or [],
        "ttl": seconds_option("--ttl", ttl),
    }
    made = _identity(state, config, "POST", "/admin/v1/server-certificates", body)
    facts = {
        "renewed": True,
        "names": made["names"],
        "serial": made["serial"],
        "not_after": made["not_after"],
        "files": _write_server_files(out_dir, key, made),
    }
    if made["until_ca_expiry"]:
        err.print(
            f"valid until {made['not_after']}, when the signing CA that issued it expires: "
            "renew it before then (run this again)",
            markup=False,
        )
    if as_json:
        out.print_json(json.dumps(facts))
        return
    table = Table(show_header=False)
    for name, value in facts.items():
        table.add_row(name, ", ".join(value) if isinstance(value, list) else str(value))
    out.print(table)


def _write_server_files(out_dir: Path, key: crypto.PrivateKey, made: dict[str, Any]) -> list[str]:
    """``server.key`` (0600), ``server.crt`` and ``ca.crt`` in ``out_dir``, each written
    atomically; their paths."""
    files = {
        "server.key": (crypto.private_key_to_pem(key), 0o600),
        "server.crt": (str(made["chain_pem"]).encode(), 0o644),
        "ca.crt": (str(made["bundle_pem"]).encode(), 0o644),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, (data, mode) in files.items():
            crypto.replace_file(out_dir / name, data, mode)
    except OSError as exc:
        fail(f"cannot write the certificate to {out_dir}: {exc}")
    return [str(out_dir / name) for name in files]


def _not_due(out_dir: Path, dns: list[str], ip: list[str], window: int, *, as_json: bool) -> bool:
    """Whether the server certificate in ``out_dir`` is for these names and outlives
    ``window`` seconds (said, when so)."""
    held = _held_until(out_dir / "server.crt", dns, ip)
    if held is None or held - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=window):
        return False
    if as_json:
        out.print_json(json.dumps({"renewed": False, "not_after": held.isoformat(), "files": []}))
    else:
        out.print(f"not due: {out_dir / 'server.crt'} is valid until {held.isoformat()}")
    return True


def _held_until(path: Path, dns: list[str], ip: list[str]) -> dt.datetime | None:
    """Until when the server certificate at ``path`` is valid, if it is one for exactly
    these names (None: missing, unreadable, or for other names: renew)."""
    try:
        (cert, *_) = crypto.certs_from_pem(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        held = {n.lower() for n in sans.get_values_for_type(x509.DNSName)} | {
            str(a) for a in sans.get_values_for_type(x509.IPAddress)
        }
        asked = {n.lower() for n in dns} | {str(ipaddress.ip_address(a)) for a in ip}
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return cert.not_valid_after_utc if held == asked else None


def _suspension_json(doc: dict[str, Any]) -> dict[str, object]:
    return {
        "spiffe_id": doc["spiffe_id"],
        "until": doc["until"],
        "cause": doc["cause"],
        "created": doc["created"],
        "by": doc["by"],
    }


def _checked_id(spiffe_id: str) -> str:
    try:
        parse_spiffe_id(spiffe_id)
    except UsageError as exc:
        fail_on(exc)
    return spiffe_id


@app.command("suspend")
def suspend(
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://<trust-domain>/<path>")],
    for_: Annotated[
        str | None,
        typer.Option("--for", help="How long, e.g. 1h (at most 30d); default: until lifted."),
    ] = None,
    cause: Annotated[str | None, typer.Option(help="Why (recorded; at most 256 chars).")] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
) -> None:
    """Suspend SPIFFE-ID: no SVID is issued for it, and services refuse it."""
    body: dict[str, object] = {"spiffe_id": _checked_id(spiffe_id)}
    seconds = seconds_option("--for", for_)
    if seconds is not None:
        body["seconds"] = seconds
    if cause is not None:
        body["cause"] = cause
    made = _identity(state, config, "POST", SUSPENSIONS, body)
    if as_json:
        out.print_json(data=_suspension_json(made))
        return
    until = made["until"] or "lifted"
    out.print(f"suspended {made['spiffe_id']} until {until}", markup=False)


@app.command("unsuspend")
def unsuspend(
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://<trust-domain>/<path>")],
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Lift SPIFFE-ID's suspension (a fact, not an error, when there was none)."""
    path = f"{SUSPENSIONS}?{urlencode({'spiffe_id': _checked_id(spiffe_id)})}"
    lifted = _identity(state, config, "DELETE", path)
    if lifted["lifted"]:
        out.print(f"lifted the suspension of {spiffe_id}", markup=False)
    else:
        out.print(f"{spiffe_id} was not suspended", markup=False)


@app.command("suspensions")
def list_suspensions(
    config: ConfigOption = None, state: StateOption = DEFAULT_STATE, as_json: JsonOption = False
) -> None:
    """List the suspended SPIFFE IDs."""
    found = _identity(state, config, "GET", SUSPENSIONS)["suspensions"]
    if as_json:
        out.print_json(data=[_suspension_json(s) for s in found])
        return
    table = Table("SPIFFE ID", "until", "by", "cause")
    for s in found:
        table.add_row(s["spiffe_id"], s["until"] or "lifted", s["by"], s["cause"])
    out.print(table)


def _svid_facts(doc: dict[str, Any]) -> dict[str, object]:
    """The public facts of an issued SVID, read from its chain (never a key)."""
    chain = crypto.certs_from_pem(str(doc["chain_pem"]).encode())
    leaf = chain[0]
    not_after = dt.datetime.fromisoformat(doc["not_after"])
    return {
        "spiffe_id": doc["spiffe_id"],
        "uri_sans": crypto.uri_sans(leaf),
        "serial": doc["serial"],
        "not_before": doc["not_before"],
        "not_after": doc["not_after"],
        "issued_at": doc["issued_at"],
        "expired": not_after <= dt.datetime.now(dt.UTC),
        "issuer": leaf.issuer.rfc4514_string(),
        "sha256_fingerprint": crypto.fingerprint_sha256(leaf),
        "chain_length": len(chain),
    }


@svid_app.command("show")
def svid_show(
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://<trust-domain>/<path>")],
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: JsonOption = False,
    pem: Annotated[bool, typer.Option("--pem", help="Print the certificate chain.")] = False,
) -> None:
    """Show the last X.509-SVID issued for SPIFFE-ID (public facts; never a key)."""
    try:
        parse_spiffe_id(spiffe_id)
    except UsageError as exc:
        fail_on(exc)
    path = f"/admin/v1/svids/last?{urlencode({'spiffe_id': spiffe_id})}"
    try:
        doc = _admin.call(state, "identity", "GET", path, config=_declared(config))
    except _admin.AdminError as exc:  # none issued yet (404): a fact, not bad usage
        fail(exc.detail, 2 if exc.http_status in (400, 409) else 1)
    except TrustmeshError as exc:
        _admin.fail_admin(exc)
    facts = _svid_facts(doc)
    if as_json:
        out.print_json(json.dumps({**facts, **({"chain_pem": doc["chain_pem"]} if pem else {})}))
        return
    table = Table(show_header=False)
    for key, value in facts.items():
        table.add_row(key, str(value))
    out.print(table)
    if pem:
        print(doc["chain_pem"], end="")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="identity")
    root.add_typer(svid_app, name="svid")
