"""A whole path for token tests: the identity service and provider of the auth tests, the
gateway in front, and two services run by the SDK (orders, payments) that echo the
token they were given — so a test can follow a user's token, the gateway's internal
token and an exchanged token, and present each one again, directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from authrig import CONFIG, ORDERS, PAYMENTS, TD, AuthRig, code_flow, make_rig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config import parse_config
from trustmesh.gateway.server import RunningGateway, serve_gateway
from trustmesh.sdk.client import Response, ServiceClient
from trustmesh.sdk.runtime import Runtime, run_service
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

GATEWAY = f"spiffe://{TD}/trustmesh/gateway"
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


def identity_config(extra: str = "") -> str:
    return CONFIG + SECTION + extra


@contextlib.asynccontextmanager
async def open_stack(
    identity: RunningIdentityServer, short_tmp: Path, extra: str = ""
) -> AsyncIterator[Stack]:
    """The stack for ``CONFIG + SECTION + extra`` (``identity`` must hand out the
    gateway's SVID and serve discovery)."""
    config_file = short_tmp / "trustmesh.yaml"
    config_file.write_text(identity_config(extra))
    config = parse_config(config_file.read_text(), source=str(config_file))
    assert identity.server.discovery is not None
    discovery_url = f"https://127.0.0.1:{identity.server.discovery.port}"
    sink = events.MemorySink()
    async with make_rig(identity, short_tmp, SECTION + extra) as rig:
        source = X509Source(identity.address, spiffe_id=GATEWAY)
        await source.start()
        gateway = await serve_gateway(
            config,
            short_tmp / "state",
            source=source,
            sink=sink,
            discovery_url=discovery_url,
            auth_url=rig.url,
        )
        endpoint = short_tmp / "state" / "gateway" / "endpoint.json"
        endpoint.write_text(json.dumps({"internal_url": gateway.internal_url}))  # as `up` has it
        runtimes: list[Runtime] = []
        try:
            for name in ("payments", "orders"):
                runtimes.append(
                    await run_service(
                        APP,
                        service=name,
                        config_path=config_file,
                        address=identity.address,
                        port=0,
                        discovery_url=discovery_url,
                        auth_url=rig.url,
                        gateway_url=gateway.internal_url,
                        sink=events.MemorySink(),
                    )
                )
            payments, orders = runtimes
            RUNTIMES["orders"] = orders
            yield Stack(rig, gateway, RotatingTLS(source), orders, payments, sink)
        finally:
            RUNTIMES.clear()
            for runtime in reversed(runtimes):
                await runtime.close()
            await gateway.stop()
            await source.close()
