"""An identity service and an identity provider for auth tests: this process holds the
SVIDs of orders, payments, inventory and the provider itself."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from services import require_service
from spiffe_http import Workload
from spiffe_http import workload as svid_files

from trustmesh import crypto, events
from trustmesh.auth.db import AuthStore
from trustmesh.auth.server import RunningAuth, serve_auth
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.sdk.x509source import X509Source
from trustmesh.store import create_engine, sqlite_url
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "auth.example"
ORDERS = f"spiffe://{TD}/orders"
PAYMENTS = f"spiffe://{TD}/payments"
INVENTORY = f"spiffe://{TD}/inventory"
AUTH = f"spiffe://{TD}/trustmesh/auth"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"

CONFIG = f"""
trust_domain: {TD}
dev: true
identity: {{svid_ttl: 1h}}
services:
  orders: {{external: true}}
  payments: {{external: true}}
  inventory: {{external: true}}
calls:
  - {{from: orders, to: payments, allow: ["POST /charges"]}}
  - {{from: orders, to: inventory, allow: ["GET /items/{{item}}"]}}
  - {{from: payments, to: inventory, allow: ["GET /items/{{item}}"]}}
"""


def auth_config(extra: str = "") -> TrustmeshConfig:
    return parse_config(CONFIG + extra, source="test.yaml")


def _identity(short_tmp: Path, svid_ttl: str) -> Iterator[RunningIdentityServer]:
    text = CONFIG.replace("identity: {svid_ttl: 1h}", f"identity: {{svid_ttl: {svid_ttl}}}")
    yield from identity_for(short_tmp, text)


def identity_for(
    short_tmp: Path, config_text: str, extra_ids: tuple[str, ...] = (), **server: Any
) -> Iterator[RunningIdentityServer]:
    """An identity service for ``config_text`` (``server``: IdentityServer options) that
    hands this process the SVIDs of orders, payments, inventory, the provider, the
    operator and ``extra_ids``."""
    config = parse_config(config_text, source="test.yaml")
    with identity_server_in_thread(config, short_tmp / "identity", **server) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (ORDERS, PAYMENTS, INVENTORY, AUTH, OPERATOR, *extra_ids):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from _identity(short_tmp, "1h")


@pytest.fixture
def fast_identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    """SVIDs that live 10 seconds: several rotations in one test."""
    yield from _identity(short_tmp, "10s")


async def workload(identity: RunningIdentityServer, spiffe_id: str, where: Path) -> Workload:
    return await svid_files(identity.address, spiffe_id, where, Workload)


@pytest.fixture
async def sqlite_store(short_tmp: Path) -> AsyncIterator[AuthStore]:
    """The provider's store on SQLite, its tables made."""
    store = AuthStore(create_engine(sqlite_url(short_tmp / "auth.db")))
    await store.create()
    yield store
    await store.close()


@pytest.fixture
async def pg_store() -> AsyncIterator[AuthStore]:
    """The provider's store on a PostgreSQL database of its own, its tables made."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    name = f"tm_auth_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    await admin.execute(f'CREATE DATABASE "{name}"')
    store = AuthStore(create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"))
    try:
        await store.create()
        yield store
    finally:
        await store.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()


@dataclass
class AuthRig:
    auth: RunningAuth
    sink: events.MemorySink
    orders: Workload
    payments: Workload
    inventory: Workload
    operator: Workload
    state: Path

    @property
    def url(self) -> str:
        """The mTLS listener (workloads)."""
        return self.auth.url

    @property
    def public_url(self) -> str:
        """The public listener (browsers, public clients); dev mode always has one."""
        assert self.auth.urls.public is not None
        return self.auth.urls.public

    @property
    def issuer(self) -> str:
        return self.auth.service.settings.issuer


@contextlib.asynccontextmanager
async def make_rig(
    identity: RunningIdentityServer,
    short_tmp: Path,
    extra: str = "",
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[AuthRig]:
    """The provider (its service on ``clock``) and the SVID files of its callers."""
    sink = events.MemorySink()
    source = X509Source(identity.address, spiffe_id=AUTH)
    await source.start()
    running = await serve_auth(
        auth_config(extra), short_tmp / "state", source=source, sink=sink, clock=clock
    )
    files = short_tmp / "pki"
    workloads = [
        await workload(identity, s, files) for s in (ORDERS, PAYMENTS, INVENTORY, OPERATOR)
    ]
    try:
        yield AuthRig(running, sink, *workloads, short_tmp / "state")
    finally:
        for w in workloads:
            await w.source.close()
        await running.stop()
        await source.close()


@pytest.fixture
async def rig(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[AuthRig]:
    async with make_rig(identity, short_tmp) as made:
        yield made


class FormLogin:
    """A browser's part in a login: cookies kept, the form read and sent, redirects
    followed only by hand. ``session`` decides the channel (a workload's mTLS seat, or
    plain TLS to the public listener)."""

    def __init__(self, session: requests.Session, base: str) -> None:
        self.session = session
        self.base = base

    def get(self, url: str) -> requests.Response:
        return self.session.get(urljoin(self.base, url), allow_redirects=False, timeout=30)

    def login(self, start: str, username: str, password: str, otp: str = "") -> requests.Response:
        first = self.get(start)
        assert first.status_code == 303, first.text
        form = self.get(first.headers["Location"])
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        nxt = re.search(r'name="next" value="([^"]+)"', form.text)
        assert csrf, form.text
        assert nxt, form.text
        return self.session.post(
            self.base + "/login",
            data={
                "csrf": csrf[1],
                "next": nxt[1].replace("&amp;", "&"),
                "username": username,
                "password": password,
                "otp": otp,
            },
            allow_redirects=False,
            timeout=30,
        )


def code_flow(
    session: requests.Session,
    base: str,
    client_id: str,
    redirect_uri: str,
    username: str,
    password: str,
    otp: str = "",
    *,
    client_secret: str | None = None,
) -> dict[str, Any]:
    """Authorization code + PKCE as a public client (or, with ``client_secret``, a
    confidential one: HTTP Basic), through ``session`` (Authlib's client for the
    protocol); the token response."""
    client = OAuth2Session(
        client_id=client_id,
        redirect_uri=redirect_uri,
        scope="openid",
        token_endpoint_auth_method="client_secret_basic" if client_secret else "none",
        code_challenge_method="S256",
    )
    verifier = generate_token(48)
    url, _ = client.create_authorization_url(
        base + "/oauth2/authorize", code_verifier=verifier, nonce=generate_token(16)
    )
    browser = FormLogin(session, base)
    logged_in = browser.login(url, username, password, otp)
    assert logged_in.status_code == 303, logged_in.text
    back = browser.get(logged_in.headers["Location"])
    assert back.status_code == 303, back.text
    data = {
        "grant_type": "authorization_code",
        "code": parse_qs(urlsplit(back.headers["Location"]).query)["code"][0],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    auth = (client_id, client_secret) if client_secret else None
    if auth is None:
        data["client_id"] = client_id
    answer = session.post(base + "/oauth2/token", data=data, auth=auth, timeout=30)
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


WEB_REDIRECT = "https://shop.example/cb"
WEB_PASSWORD = "a long enough passphrase"


def sign_in_user(rig: AuthRig, username: str, roles: list[str], *, audience: str) -> str:
    """Create the user (with TOTP when the provider enrols one) and, the first time, the
    public web client ``shop-web`` for ``audience``; sign in with code + PKCE on the
    public listener; the access token."""
    with rig.operator.mount(requests.Session()) as s:
        made = s.post(
            rig.url + "/admin/v1/users",
            json={"username": username, "password": WEB_PASSWORD, "roles": roles},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        s.post(
            rig.url + "/admin/v1/clients",
            json={
                "client_id": "shop-web",
                "method": "none",
                "redirect_uris": [WEB_REDIRECT],
                "audiences": [audience],
            },
            timeout=30,
        )
    otp = ""
    if "totp_uri" in made.json():
        secret = parse_qs(urlsplit(made.json()["totp_uri"]).query)["secret"][0]
        otp = crypto.totp_code(base64.b32decode(secret + "=" * (-len(secret) % 8)), time.time())
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(crypto.edge_ca_path(rig.state))
        tokens = code_flow(
            browser, rig.public_url, "shop-web", WEB_REDIRECT, username, WEB_PASSWORD, otp
        )
    return str(tokens["access_token"])
