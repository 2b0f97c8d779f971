"""``trustmesh call``: one request to a service of the running stack, made as a declared
workload — the way to try the demo shop (or any service) from a shell.

The command acts as the workload named by ``--as``: as the operator, it has the identity
service's admin API make a one-time join token for that identity (recorded as an event
there), redeems it over the Workload API, finds the callee through discovery and calls
it over mTLS, checking the callee's SPIFFE ID, with an access token for the callee from
the identity provider (when the stack runs one). The callee's middleware decides as it
would for that workload: a call the declaration does not allow is answered 403.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trustmesh.auth.endpoint import endpoint_path as auth_endpoint_path
from trustmesh.cli._admin import as_workload
from trustmesh.cli._common import (
    DEFAULT_STATE,
    EXIT_FAILURE,
    EXIT_OK,
    ConfigOption,
    StateOption,
    fail,
    fail_on,
    load_or_exit,
)
from trustmesh.cli.supervisor import read_json
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import TrustmeshError, UsageError
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.sdk.client import Response, ServiceClient
from trustmesh.sdk.discovery import DiscoveryClient
from trustmesh.sdk.oauth import AuthClient, TokenSource

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


async def _call(
    config: TrustmeshConfig,
    state: Path,
    caller: str,
    service: str,
    method: str,
    path: str,
    body: Any,
) -> Response:
    paths = IdentityPaths(state)
    try:
        snapshot = json.loads(paths.discovery.read_text())
        discovery_url = snapshot["url"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"no running stack in {state} (start it with `trustmesh up`)") from None
    async with as_workload(config, state, config.spiffe_id(caller)) as tls:
        discovery = DiscoveryClient(tls, discovery_url)
        try:
            endpoints = await discovery.lookup(service)
        finally:
            await discovery.close()
        endpoint = endpoints[0]
        auth_doc = read_json(auth_endpoint_path(state)) or {}
        auth = (
            AuthClient(tls, str(auth_doc["url"]), config.component_spiffe_id("auth"))
            if isinstance(auth_doc.get("url"), str)
            else None
        )
        try:
            bearer = TokenSource(auth, caller).provider(endpoint.spiffe_id) if auth else None
            async with ServiceClient(
                tls, endpoint.url, endpoint.spiffe_id, retries=0, token=bearer
            ) as client:
                return await client.request(method, path, json=body)
        finally:
            if auth is not None:
                await auth.close()


def call(
    service: Annotated[str, typer.Argument(help="The service to call (a declared name).")],
    method: Annotated[str, typer.Argument(help="HTTP method.")],
    path: Annotated[str, typer.Argument(help="Request path, e.g. /orders/ord_1.")],
    caller: Annotated[
        str,
        typer.Option("--as", help="The declared workload to act as (its identity is used)."),
    ] = "storefront",
    data: Annotated[
        str | None, typer.Option("--json", help="JSON request body ('-' reads stdin).")
    ] = None,
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Call SERVICE over mTLS as workload --as; print the status line and the JSON body.

    Exit 0 for a 2xx answer, 1 otherwise (the answer is still printed), 2 for bad usage."""
    cfg, _ = load_or_exit(config)
    method = method.upper()
    if method not in METHODS:
        fail(f"method {method!r}: expected one of {', '.join(METHODS)}", 2)
    if not path.startswith("/"):
        fail(f"path {path!r}: expected an absolute path starting with '/'", 2)
    for name, what in ((caller, "--as"), (service, "SERVICE")):
        if name not in cfg.services:
            fail(f"{what} {name!r}: not a service declared in the configuration", 2)
    body: Any = None
    if data is not None:
        try:
            body = json.loads(sys.stdin.read() if data == "-" else data)
        except ValueError as exc:
            fail(f"--json: not valid JSON ({exc})", 2)
    try:
        response = asyncio.run(_call(cfg, state, caller, service, method, path, body))
    except TrustmeshError as exc:
        fail_on(exc)
    print(f"HTTP {response.status}")
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.body.decode("utf-8", "replace"))
    raise typer.Exit(EXIT_OK if 200 <= response.status < 300 else EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("call")(call)
