"""The identity provider's service layer on its own: signing-key rotation under a
controlled clock, keys sealed at rest, and the same store on PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from authrig import PAYMENTS, auth_config
from services import postgres_database

from trustmesh import crypto, events
from trustmesh.auth.db import AuthStore, Client
from trustmesh.auth.service import AuthService, AuthSettings
from trustmesh.crypto import SealKey
from trustmesh.errors import (
    ConflictError,
    InvalidTokenError,
    NotFoundError,
    SealError,
    UnavailableError,
)
from trustmesh.reasons import Activity, Reason
from trustmesh.store import create_engine, sqlite_url
from trustmesh.testing import FakeClock

ISSUER = "https://127.0.0.1:1"


T0 = 1_900_000_000.0


def _service(store: AuthStore, clock: FakeClock, sink: events.MemorySink) -> AuthService:
    key = SealKey(os.urandom(32), "env")
    settings = AuthSettings(issuer=ISSUER, token_ttl=900, publish_delay=300, rotate_every=0)
    return AuthService(auth_config(), store, key, settings, sink, clock=clock.time)


@pytest.fixture
async def sqlite_store(short_tmp: Path) -> AsyncIterator[AuthStore]:
    store = AuthStore(create_engine(sqlite_url(short_tmp / "auth.db")))
    yield store
    await store.close()


def _verify(service: AuthService, token: str) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {j["kid"]: j for j in json.loads(service.ring.jwks)["keys"]}
    key = jwt.PyJWK(keys[kid]).key
    claims: dict[str, object] = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=PAYMENTS,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


def _mint(service: AuthService) -> str:
    """An access token from ``service`` for the orders client, addressed to payments."""
    orders = next(c for c in service.managed_clients() if c.client_id == "orders")
    return service.mint(
        client=orders,
        subject=orders.spiffe_id or "",
        audience=[PAYMENTS],
        scope=[],
        cnf_thumbprint=None,
    ).token


async def test_rotation_publishes_first_then_signs_and_keeps_the_old_key(
    sqlite_store: AuthStore,
) -> None:
    clock, sink = FakeClock(T0), events.MemorySink()
    service = _service(sqlite_store, clock, sink)
    await service.start()
    orders = next(c for c in service.managed_clients() if c.client_id == "orders")
    first = service.ring.active
    assert first is not None
    old_token = _mint(service)
    await service.tick(rotate=True)
    kids = {j["kid"] for j in json.loads(service.ring.jwks)["keys"]}
    assert len(kids) == 2  # the next key is published...
    # ...but does not sign yet
    assert jwt.get_unverified_header(_mint(service))["kid"] == first.kid
    await service.tick(rotate=True)  # asking again while one is pending adds nothing
    assert len(json.loads(service.ring.jwks)["keys"]) == 2
    clock.advance(300)
    await service.tick()
    new_token = _mint(service)
    assert service.ring.active is not None
    assert service.ring.active.kid != first.kid
    assert jwt.get_unverified_header(new_token)["kid"] == service.ring.active.kid
    # tokens signed by the old key stay verifiable until they expire
    assert _verify(service, old_token)["sub"] == orders.spiffe_id
    assert _verify(service, new_token)["sub"] == orders.spiffe_id
    clock.advance(900 + 60 - 1)
    await service.tick()
    assert first.kid in service.ring.jwks.decode()
    clock.advance(2)
    await service.tick()
    assert first.kid not in service.ring.jwks.decode()
    with pytest.raises(InvalidTokenError):
        service.verify_own(old_token)
    reasons = [e.reason for e in sink.events]
    for reason in (
        Activity.KEY_CREATED,
        Activity.KEY_ACTIVATED,
        Activity.KEY_RETIRED,
        Activity.KEY_REMOVED,
    ):
        assert reason in reasons


async def test_with_no_active_key_nothing_is_signed_until_one_activates(
    sqlite_store: AuthStore,
) -> None:
    """The active key's row is lost (deleted by hand, an older backup restored) while the
    next key is only published: the provider signs nothing rather than sign early."""
    clock, sink = FakeClock(T0), events.MemorySink()
    service = _service(sqlite_store, clock, sink)
    await service.start()
    first = service.ring.active
    assert first is not None
    await service.tick(rotate=True)  # the next key: published, signing after 300 s
    await sqlite_store.remove_key(first.kid)
    await service.tick()
    assert service.ring.active is None
    with pytest.raises(UnavailableError) as minted:
        _mint(service)
    assert minted.value.reason is Reason.SIGNING_KEY_UNAVAILABLE
    with pytest.raises(UnavailableError) as id_token:
        service.id_token(
            client_id="shop-web",
            subject="alice",
            username="alice",
            nonce=None,
            auth_time=int(clock.time()),
            amr=["pwd"],
            access_token="x",
        )
    assert id_token.value.reason is Reason.SIGNING_KEY_UNAVAILABLE
    # once the published key's time comes, it signs (no new key was made meanwhile)
    clock.advance(300)
    await service.tick()
    active = service.ring.active
    assert active is not None
    assert [k.kid for k in service.ring.states] == [active.kid]
    assert jwt.get_unverified_header(_mint(service))["kid"] == active.kid


async def test_signing_keys_are_sealed_at_rest(sqlite_store: AuthStore, short_tmp: Path) -> None:
    service = _service(sqlite_store, FakeClock(T0), events.MemorySink())
    await service.start()
    with sqlite3.connect(short_tmp / "auth.db") as db:
        rows = db.execute("SELECT sealed_private, public_jwk FROM auth_signing_keys").fetchall()
    assert rows
    for sealed, public in rows:
        assert crypto.is_sealed(sealed)
        assert b"PRIVATE KEY" not in sealed
        assert '"d"' not in public
    # another sealing key cannot open them: the service refuses to start
    other = AuthService(
        auth_config(),
        sqlite_store,
        SealKey(os.urandom(32), "env"),
        AuthSettings(issuer=ISSUER),
        events.MemorySink(),
        clock=FakeClock(T0).time,
    )
    with pytest.raises(SealError):
        await other.start()


async def _exercise_store(store: AuthStore) -> None:
    await store.create()
    await store.create()  # idempotent
    client = Client("batch", "client_secret_basic", secret_hash="sha256$00", audiences=(PAYMENTS,))
    await store.add_client(client)
    with pytest.raises(ConflictError):
        await store.add_client(client)
    assert await store.get_client("batch") == client
    await store.revoke("j1", "batch", expires_at=200, now=100)
    await store.revoke("j1", "batch", expires_at=200, now=100)  # idempotent
    await store.revoke("j2", "batch", expires_at=150, now=100)
    assert await store.is_revoked("j1")
    assert not await store.is_revoked("j3")
    rows = await store.revocations_since(0, now=120)
    assert [r.jti for r in rows] == ["j1", "j2"]
    assert [r.jti for r in await store.revocations_since(rows[0].seq, now=120)] == ["j2"]
    assert [r.jti for r in await store.revocations_since(0, now=160)] == ["j1"]
    assert await store.use_assertion("batch a1", 300)
    assert not await store.use_assertion("batch a1", 300)
    await store.prune(now=300)
    assert not await store.is_revoked("j1")
    assert await store.use_assertion("batch a1", 400)
    await store.remove_client("batch")
    with pytest.raises(NotFoundError):
        await store.remove_client("batch")


async def test_store_on_sqlite(sqlite_store: AuthStore) -> None:
    await _exercise_store(sqlite_store)


@pytest.mark.services
async def test_store_on_postgresql() -> None:
    async with postgres_database("tm_auth") as url:
        store = AuthStore(create_engine(url))
        try:
            await _exercise_store(store)
            clock = FakeClock(T0)
            service = _service(store, clock, events.MemorySink())
            await service.start()
            assert service.ring.active is not None
        finally:
            await store.close()
