"""The SDK's client of the secrets service (sdk.secret / sdk.secrets): logged in with the
service's SVID, values cached until their TTL, the token renewed at half-life and a new
login when the token is refused; transit encrypt/decrypt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from secretsrig import PAYMENTS, SECRETS, SecretsRig

from trustmesh.errors import NotFoundError, PermissionDeniedError
from trustmesh.sdk.secrets import DEFAULT_TTL, SecretsClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Context, X509Source
from trustmesh.testing import FakeClock


@pytest.fixture
async def sdk(rig: SecretsRig) -> AsyncIterator[tuple[SecretsClient, FakeClock]]:
    clock = FakeClock()
    client = SecretsClient(
        RotatingTLS(rig.payments.source), rig.url, SECRETS, clock=clock.monotonic
    )
    yield client, clock
    await client.close()


def _requests(rig: SecretsRig, path: str) -> int:
    lines = [json.loads(line) for line in rig.audit_lines()]
    return sum(
        1
        for r in lines
        if r["type"] == "request"
        and r["request"]["path"] == path
        and r["request"]["operation"] in ("get", "post")
        and (path.startswith("auth/") or r["request"]["operation"] == "get")
    )


async def test_a_secret_is_read_once_per_ttl(
    rig: SecretsRig, sdk: tuple[SecretsClient, FakeClock]
) -> None:
    client, clock = sdk

    def seed() -> None:
        kv = rig.login(rig.payments).secrets.kv.v2
        kv.create_or_update_secret("payments/db", {"user": "pay", "password": "p1"})
        kv.update_metadata("payments/short", custom_metadata={"ttl": "30s"})
        kv.create_or_update_secret("payments/short", {"v": "1"})

    await asyncio.to_thread(seed)
    assert await client.secret("payments/db") == {"user": "pay", "password": "p1"}
    assert await client.secret("payments/db") == {"user": "pay", "password": "p1"}
    assert _requests(rig, "secret/data/payments/db") == 1
    assert await client.secret("payments/short") == {"v": "1"}
    clock.advance(31)
    assert await client.secret("payments/short") == {"v": "1"}
    assert _requests(rig, "secret/data/payments/short") == 2
    assert _requests(rig, "secret/data/payments/db") == 1  # its default TTL has not passed
    clock.advance(DEFAULT_TTL)
    await client.secret("payments/db")
    assert _requests(rig, "secret/data/payments/db") == 2
    with pytest.raises(NotFoundError):
        await client.secret("payments/missing")
    with pytest.raises(PermissionDeniedError):
        await client.secret("orders/db")  # not payments' to read, even with a fresh login


async def test_the_token_is_renewed_and_a_refused_one_replaced(
    rig: SecretsRig, sdk: tuple[SecretsClient, FakeClock]
) -> None:
    client, clock = sdk
    await client.token()
    assert client.logins == 1
    clock.advance(1900)  # past half of the 1 h token
    token = await client.token()
    assert _requests(rig, "auth/token/renew-self") == 1
    assert client.logins == 1
    # the token is revoked behind the client's back: the next call logs in again
    await client.request("POST", "/v1/auth/token/revoke-self")
    assert await client.encrypt("payments", b"x")
    assert client.logins == 2
    assert await client.token() != token


async def test_transit_through_the_sdk(sdk: tuple[SecretsClient, FakeClock]) -> None:
    client, _ = sdk
    sealed = await client.encrypt("payments", b"4111 1111 1111 1111")
    assert sealed.startswith("vault:v1:")
    assert await client.decrypt("payments", sealed) == b"4111 1111 1111 1111"


class _Rotating:
    """The payments SVID source, rotated on demand to a second real SVID."""

    def __init__(self, first: X509Source, second: X509Source) -> None:
        self._sources = [first, second]
        self._subscribers: list[Callable[[X509Context], None]] = []

    @property
    def context(self) -> X509Context:
        return self._sources[0].context

    def subscribe(self, callback: Callable[[X509Context], None]) -> None:
        self._subscribers.append(callback)
        callback(self.context)

    async def start(self, timeout: float = 30.0) -> X509Context:
        return self.context

    async def close(self) -> None:
        return None

    def rotate(self) -> None:
        self._sources.reverse()
        for callback in self._subscribers:
            callback(self.context)


async def test_a_new_login_after_the_svid_rotates(rig: SecretsRig) -> None:
    second = X509Source(rig.identity.address, spiffe_id=PAYMENTS)
    await second.start()
    source = _Rotating(rig.payments.source, second)
    assert source.context.chain[0].serial_number != second.context.chain[0].serial_number
    client = SecretsClient(RotatingTLS(source), rig.url, SECRETS)
    try:
        await client.encrypt("payments", b"before")
        assert client.logins == 1
        source.rotate()
        await client.encrypt("payments", b"after")
        assert client.logins == 2  # the token came with the old SVID's login
        await client.encrypt("payments", b"again")
        assert client.logins == 2
    finally:
        await client.close()
        await second.close()
