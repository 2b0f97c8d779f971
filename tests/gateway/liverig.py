"""The live gateway stack of the gateway's tests, built in one place: an identity service
that hands out the gateway's SVID and serves discovery (:func:`live_identity`), the
identity provider of the auth tests, a gateway via ``serve_gateway``, the services the SDK
runs in front of their apps, and a client with no SVID that trusts the dev edge CA
(:func:`live_gateway`). What differs between the tests is what they pass: the
declaration's section, the services and their apps, files beside the declaration (edge
policies), other issuers the gateway trusts; gateways with other settings and more
services start on demand (:meth:`Live.start_gateway`, :meth:`Live.start_service`).

On it, a whole path for token tests (:func:`open_stack`): two services run by the SDK
(orders, payments) that echo the token they were given — so a test can follow a user's
token, the gateway's internal token and an exchanged token, and present each one again,
directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
from authrig import CONFIG, ORDERS, PAYMENTS, TD, AuthRig, code_flow, identity_for, make_rig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.gateway.endpoint import endpoint_path
from trustmesh.gateway.server import RunningGateway, serve_gateway
from trustmesh.platform.listeners import ASGIApp
from trustmesh.sdk.client import Response, ServiceClient
from trustmesh.sdk.runtime import Runtime, run_service
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

GATEWAY = f"spiffe://{TD}/trustmesh/gateway"


def live_identity(short_tmp: Path, section: str) -> Iterator[RunningIdentityServer]:
    """The identity service for ``CONFIG + section``, handing out the gateway's SVID too
    and serving discovery: what :func:`live_gateway` needs."""
    yield from identity_for(short_tmp, CONFIG + section, (GATEWAY,), discovery=True)


@dataclass
class Live:
    """A running stack: the provider, the gateway(s) and the services the SDK runs."""

    rig: AuthRig
    root: Path  # the declaration (trustmesh.yaml), the files beside it, and the state
    address: str  # the identity service's
    discovery_url: str
    source: X509Source  # the gateway's SVID: every gateway of the stack holds it
    http: aiohttp.ClientSession  # no SVID, trusts the dev edge CA, a connection per request
    sink: events.MemorySink  # the first gateway's events
    gateways: list[RunningGateway] = field(default_factory=list)
    runtimes: list[Runtime] = field(default_factory=list)  # stopped with the stack
    clock: Callable[[], float] = time.time  # the gateways' wall clock

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def gateway(self) -> RunningGateway:
        """The first gateway: the one the services trust."""
        return self.gateways[0]

    async def start_gateway(
        self, config: TrustmeshConfig, sink: events.EventSink
    ) -> RunningGateway:
        """Another gateway for ``config``, on the stack's state (one signing key, one API
        key store), stopped with the stack."""
        running = await serve_gateway(
            config,
            self.state,
            source=self.source,
            sink=sink,
            discovery_url=self.discovery_url,
            auth_url=self.rig.url,
            config_dir=self.root,
            clock=self.clock,
        )
        self.gateways.append(running)
        return running

    async def start_service(self, name: str, app: ASGIApp) -> Runtime:
        """``app`` run by the SDK as ``name`` (it trusts the first gateway), stopped with
        the stack unless a test takes it out of ``runtimes``."""
        runtime = await run_service(
            app,
            service=name,
            config_path=self.root / "trustmesh.yaml",
            address=self.address,
            port=0,
            discovery_url=self.discovery_url,
            auth_url=self.rig.url,
            gateway_url=self.gateway.internal_url,
            sink=events.MemorySink(),
        )
        self.runtimes.append(runtime)
        return runtime


def _issuers(entries: Sequence[str]) -> str:
    """``gateway.issuers`` with these entries (flow mappings), to follow a section whose
    last key is ``gateway``."""
    if not entries:
        return ""
    return "  issuers:\n" + "".join(f"    - {entry}\n" for entry in entries)


@contextlib.asynccontextmanager
async def live_gateway(
    identity: RunningIdentityServer,
    root: Path,
    section: str,
    services: Sequence[tuple[str, ASGIApp]] = (),
    *,
    files: Mapping[str, str] | None = None,
    issuers: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Live]:
    """The provider and a gateway for ``CONFIG + section`` (written to ``trustmesh.yaml``
    in ``root``, ``files`` beside it; the gateway alone also trusts ``issuers``, entries
    of ``gateway.issuers``), its endpoint file written as ``up`` has it, and ``services``
    (name, app) run by the SDK in that order. ``identity``: from :func:`live_identity`;
    ``clock``: the gateways' wall clock (a :class:`~trustmesh.testing.FakeClock`'s ``time``
    moves what the gateway decides by time, not the provider or the services)."""
    config_file = root / "trustmesh.yaml"
    config_file.write_text(CONFIG + section)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    config = parse_config(CONFIG + section + _issuers(issuers), source=str(config_file))
    assert identity.server.discovery is not None
    discovery_url = f"https://127.0.0.1:{identity.server.discovery.port}"
    async with make_rig(identity, root, section) as rig:
        source = X509Source(identity.address, spiffe_id=GATEWAY)
        await source.start()
        tls = ssl.create_default_context(cafile=str(crypto.edge_ca_path(rig.state)))
        http = aiohttp.ClientSession(  # a connection per request: nothing kept across waits
            connector=aiohttp.TCPConnector(ssl=tls, force_close=True, limit=16),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        sink = events.MemorySink()
        live = Live(rig, root, identity.address, discovery_url, source, http, sink, clock=clock)
        try:
            gateway = await live.start_gateway(config, live.sink)
            endpoint_path(live.state).write_text(json.dumps({"internal_url": gateway.internal_url}))
            for name, app in services:
                await live.start_service(name, app)
            yield live
        finally:
            await http.close()
            for runtime in reversed(live.runtimes):
                await runtime.close()
            for running in reversed(live.gateways):
                await running.stop()
            await source.close()


SECTION = """gateway:
  routes:
    - {path: /orders, to: orders, methods: [GET, POST], claims: [roles, preferred_username]}
"""
REDIRECT = "https://shop.example/cb"
CLIENT = "shop-web"
#: How soon a revocation reaches the gateway and every service by polling the feed
#: (every second), as the README says; with Redis it is pushed at once.
POLL_BOUND = 2.0
PUSH_BOUND = 1.0


async def echo(request: Request) -> JSONResponse:
    """The upstream: the token it was given and its subject."""
    token = request.state.trustmesh_token
    return JSONResponse({"authorization": request.headers["authorization"], "sub": token.subject})


RUNTIMES: dict[str, Runtime] = {}


async def pay(request: Request) -> JSONResponse:
    """orders → payments on the user's behalf (the gateway's token exchanged)."""
    client = await RUNTIMES["orders"].client_for("payments", on_behalf_of=request)
    answer = await client.post("/charges")
    return JSONResponse(answer.json(), status_code=answer.status)


APP = Starlette(
    routes=[
        Route("/orders/{id}/pay", pay, methods=["POST"]),
        Route("/{path:path}", echo, methods=["GET", "POST"]),
    ]
)


@dataclass
class Stack:
    rig: AuthRig
    gateway: RunningGateway
    gateway_tls: RotatingTLS  # the gateway's own SVID: its internal tokens are bound to it
    orders: Runtime
    payments: Runtime
    sink: events.MemorySink

    @property
    def ca(self) -> str:
        return str(crypto.edge_ca_path(self.rig.state))

    # -- the provider, as the operator and as a browser -----------------------------------
    def admin(self, method: str, path: str, body: Any = None) -> requests.Response:
        with self.rig.operator.mount(requests.Session()) as s:
            return s.request(method, self.rig.url + path, json=body, timeout=30)

    def add_user(self, username: str, password: str) -> None:
        made = self.admin(
            "POST",
            "/admin/v1/users",
            {"username": username, "password": password, "roles": ["user"]},
        )
        assert made.status_code == 201, made.text
        client = {
            "client_id": CLIENT,
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": [GATEWAY],
        }
        self.admin("POST", "/admin/v1/clients", client)  # 409 once it exists

    def login(self, username: str, password: str, otp: str = "") -> dict[str, Any]:
        with requests.Session() as browser:
            browser.trust_env = False
            browser.verify = self.ca
            return code_flow(
                browser, self.rig.public_url, CLIENT, REDIRECT, username, password, otp
            )

    def public_post(self, path: str, data: dict[str, str]) -> requests.Response:
        return requests.post(self.rig.public_url + path, data=data, verify=self.ca, timeout=30)

    def refresh(self, refresh_token: str) -> requests.Response:
        return self.public_post(
            "/oauth2/token",
            {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT},
        )

    # -- the gateway and the services -------------------------------------------------------
    def call(self, token: str, method: str = "GET", path: str = "/orders/o_1") -> requests.Response:
        with requests.Session() as s:
            s.trust_env = False
            return s.request(
                method,
                self.gateway.url + path,
                headers={"Authorization": f"Bearer {token}"},
                verify=self.ca,
                timeout=30,
            )

    async def status(self, token: str) -> int:
        return (await asyncio.to_thread(self.call, token)).status_code

    async def direct(
        self, tls: RotatingTLS, runtime: Runtime, spiffe_id: str, method: str, path: str, value: str
    ) -> Response:
        """``value`` (an ``Authorization`` header) sent straight to a service, over mTLS
        with ``tls`` — the certificate the token is bound to."""
        async with ServiceClient(tls, runtime.url, spiffe_id, retries=0) as client:
            return await client.request(method, path, headers={"Authorization": value})

    async def internal_token(self, token: str) -> str:
        """The gateway's internal token for ``token`` (the upstream echoes it)."""
        answer = await asyncio.to_thread(self.call, token)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["authorization"])

    async def exchanged_token(self, token: str) -> str:
        """The token orders got at the provider for payments, on the user's behalf."""
        answer = await asyncio.to_thread(self.call, token, "POST", "/orders/o_1/pay")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["authorization"])

    async def internal_status(self, value: str) -> int:
        return (
            await self.direct(self.gateway_tls, self.orders, ORDERS, "GET", "/orders/o_1", value)
        ).status

    async def exchanged_status(self, value: str) -> int:
        answer = await self.direct(
            self.orders.tls, self.payments, PAYMENTS, "POST", "/charges", value
        )
        return answer.status


async def within(seconds: float, check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Ask ``check`` until it holds, for at most ``seconds`` (a deadline, not a sleep);
    how long it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: still not so after {seconds} s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def open_stack(
    identity: RunningIdentityServer, short_tmp: Path, extra: str = ""
) -> AsyncIterator[Stack]:
    """The token path for ``SECTION + extra`` (``identity``: ``live_identity(short_tmp,
    SECTION)``)."""
    services = [("payments", APP), ("orders", APP)]
    async with live_gateway(identity, short_tmp, SECTION + extra, services) as live:
        payments, orders = live.runtimes
        RUNTIMES["orders"] = orders
        try:
            yield Stack(
                live.rig, live.gateway, RotatingTLS(live.source), orders, payments, live.sink
            )
        finally:
            RUNTIMES.clear()
