"""``trustmesh secrets init|unseal|seal|status|rotate|reload``: the secrets service's seal
and policies, through its Vault API (``sys/``), as the operator (whose SVID alone may
initialise, unseal, seal, rotate and reload). The unseal key shares are printed once,
by ``init``; nothing keeps them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from secrets import token_hex
from typing import Annotated, Any

import typer

from trustmesh.cli import _admin
from trustmesh.cli._common import DEFAULT_STATE, ConfigOption, JsonOption, StateOption, err, out
from trustmesh.cli._common import declared as _declared
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError, UnavailableError
from trustmesh.sdk.secrets import SecretsClient

app = typer.Typer(
    help="The secrets service: initialise, unseal, seal, rotate its root key.",
    no_args_is_help=True,
)


def _sys(state: Path, config: Path | None, method: str, path: str, body: object = None) -> Any:
    try:
        return _admin.call(
            state, "secrets", method, f"/v1/sys/{path}", body, config=_declared(config)
        )
    except TrustmeshError as exc:
        _admin.fail_admin(exc)


def _show_status(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(data=doc)
        return
    state = "sealed" if doc.get("sealed") else "unsealed"
    if not doc.get("initialized"):
        state = "not initialised"
    out.print(f"secrets: {state}", markup=False)
    if doc.get("initialized"):
        out.print(f"  shares: {doc.get('n')}, threshold: {doc.get('t')}", markup=False)
    if doc.get("sealed") and doc.get("initialized"):
        out.print(f"  unseal progress: {doc.get('progress')}/{doc.get('t')}", markup=False)
    if doc.get("wrong_shares"):
        out.print(f"  wrong shares given: {doc.get('wrong_shares')}", markup=False)


@app.command("status")
def status(
    state: StateOption = DEFAULT_STATE, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Whether the secrets service is initialised and sealed, and the unseal progress."""
    _show_status(_sys(state, config, "GET", "seal-status"), as_json)


@app.command("init")
def init(
    shares: Annotated[int, typer.Option("--shares", min=1, max=255, help="Key shares made.")] = 5,
    threshold: Annotated[
        int, typer.Option("--threshold", min=1, max=255, help="Shares needed to unseal.")
    ] = 3,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Initialise: split the unseal key into SHARES, any THRESHOLD of which unseal. The
    shares and a root token are printed once; give each share to a different person."""
    body = {"secret_shares": shares, "secret_threshold": threshold}
    doc = _sys(state, config, "PUT", "init", body)
    if as_json:
        print(json.dumps(doc))
        return
    err.print(
        f"Initialised with {shares} shares, threshold {threshold}. They are shown once: "
        "keep each apart; the service stays sealed until THRESHOLD of them are given.",
        markup=False,
    )
    for number, key in enumerate(doc["keys_base64"], 1):
        print(f"Unseal key {number}: {key}")
    print(f"Root token: {doc['root_token']}")


@app.command("unseal")
def unseal(
    key: Annotated[
        str | None, typer.Argument(help="One unseal key share (prompted for if left out).")
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Forget the shares given so far.")] = False,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give one unseal key share; the service unseals once THRESHOLD shares are given."""
    if reset:
        body: dict[str, Any] = {"reset": True}
    else:
        share = key or typer.prompt("Unseal key share", hide_input=True)
        body = {"key": share}
    _show_status(_sys(state, config, "PUT", "unseal", body), as_json)


@app.command("seal")
def seal(state: StateOption = DEFAULT_STATE, config: ConfigOption = None) -> None:
    """Seal: the service drops its keys and answers 503 until unsealed again."""
    _sys(state, config, "PUT", "seal")
    out.print("secrets: sealed", markup=False)


@app.command("rotate")
def rotate(state: StateOption = DEFAULT_STATE, config: ConfigOption = None) -> None:
    """Put every data key under a new root key and start a new data-key term, while the
    service keeps serving (the unseal key shares stay the same)."""
    _sys(state, config, "PUT", "rotate")
    out.print(
        "secrets: the keyring is under a new root key; new values use a new term", markup=False
    )


@app.command("reload")
def reload(
    state: StateOption = DEFAULT_STATE, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Read the declaration the service was started with again and apply its secrets
    policies and token lifetimes, to the tokens already issued too (a declaration that
    does not load changes nothing; every problem is named)."""
    doc = _sys(state, config, "PUT", "config/reload/policies")
    if as_json:
        out.print_json(data=doc)
        return
    data = doc.get("data") or {}
    names = ", ".join(data.get("identities") or []) or "none"
    out.print(f"secrets: policies reloaded; identities: {names}", markup=False)
    for warning in doc.get("warnings") or []:
        err.print(f"warning: {warning}", markup=False)


#: What the demo's payments service reads at start (its processor's API key).
DEMO_SECRET_PATH = "payments/processor"  # noqa: S105 - a path, not a secret


def seed_demo(config: TrustmeshConfig, state: Path) -> None:
    """Dev mode, the demo: the operator writes payments' processor key into the secrets
    service once (check-and-set 0: an existing value is kept), so that payments reads its
    credentials from there and from nowhere else."""

    async def run() -> None:
        async with _admin.as_operator(state, config) as operator:
            url = _admin.admin_url(state, "secrets")
            client = SecretsClient(operator.tls, url, operator.component("secrets"))
            try:
                body = {"options": {"cas": 0}, "data": {"api_key": "demo_" + token_hex(24)}}
                answer = await client.request("POST", f"/v1/secret/data/{DEMO_SECRET_PATH}", body)
            finally:
                await client.close()
        if answer.status >= 300 and b"check-and-set" not in answer.body:
            raise UnavailableError(f"the demo's secret was not written (HTTP {answer.status})")

    asyncio.run(run())


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="secrets")
