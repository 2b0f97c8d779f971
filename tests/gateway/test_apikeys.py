"""Gateway API keys: format, hashing at rest, decisions, the store and the verifier's
cache, on real SQLite files (and PostgreSQL where it runs)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event, text

from trustmesh import events
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.errors import ConflictError, NotFoundError, UnavailableError, UsageError
from trustmesh.gateway import apikeys
from trustmesh.gateway.apikeys import KeyRecord, decide, hash_key, parse_key, presented_api_key
from trustmesh.gateway.keystore import (
    ApiKeyVerifier,
    SqlKeyStore,
    add_key,
    keys_db_path,
    open_keystore,
    revoke_key,
    rotate_key,
)
from trustmesh.reasons import Reason
from trustmesh.store import create_engine
from trustmesh.testing import FakeClock

CONFIG = """
trust_domain: keys.example
dev: true
services:
  orders: {external: true}
  reports: {external: true}
auth: {roles: [user, admin, reader]}
gateway:
  routes:
    - {path: /orders, to: orders, auth: [api_key, jwt], methods: [GET, POST]}
    - {path: /reports, to: reports, auth: [api_key], name: reports}
    - {path: /public, to: orders, auth: [jwt]}
"""
T0 = 1_800_000_000.0


@pytest.fixture
def config() -> TrustmeshConfig:
    return parse_config(CONFIG, source="test")


@pytest.fixture
def sink() -> events.MemorySink:
    return events.MemorySink()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def verifier(
    short_tmp: Path, config: TrustmeshConfig, clock: FakeClock
) -> AsyncIterator[ApiKeyVerifier]:
    opened = await ApiKeyVerifier.open(short_tmp, config, clock=clock.time)
    try:
        yield opened
    finally:
        await opened.close()


def _store(verifier: ApiKeyVerifier) -> SqlKeyStore:
    assert isinstance(verifier.store, SqlKeyStore)
    return verifier.store


@contextmanager
def queries(store: SqlKeyStore) -> Iterator[list[str]]:
    """The SQL statements the store's engine sends while the block runs."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


async def _add(
    verifier: ApiKeyVerifier,
    config: TrustmeshConfig,
    sink: events.MemorySink,
    *,
    scopes: tuple[str, ...] = ("/orders",),
    roles: tuple[str, ...] = ("reader",),
    expires_in: timedelta | None = None,
    now: float = T0,
) -> apikeys.IssuedKey:
    return await add_key(
        _store(verifier),
        config,
        name="ci",
        scopes=scopes,
        roles=roles,
        expires_in=expires_in,
        now=now,
        sink=sink,
    )


# --- the format -------------------------------------------------------------------------


def test_a_new_key_has_a_prefix_a_public_id_and_256_random_bits() -> None:
    key_id, key = apikeys.new_key()
    prefix, id_part, secret = key.split("_")
    assert (prefix, id_part) == ("tmk", key_id)
    assert len(key_id) == 12
    assert len(secret) == 52  # 32 bytes in base32
    assert set(key_id + secret) <= set("abcdefghijklmnopqrstuvwxyz234567")
    parsed = parse_key(key)
    assert parsed is not None
    assert parsed.key_id == key_id
    keys = {apikeys.new_key()[1] for _ in range(200)}
    assert len(keys) == 200
    assert len({k.split("_")[1] for k in keys}) == 200
    again_id, again = apikeys.new_key(key_id)  # rotation: the same id, a new secret
    assert again_id == key_id
    assert again != key
    assert again.startswith(f"tmk_{key_id}_")


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "tmk_",
        "tmk_abcdefghijkl",
        "tmk_abcdefghijkl_" + "a" * 51,
        "tmk_abcdefghijkl_" + "a" * 53,
        "tmk_ABCDEFGHIJKL_" + "a" * 52,
        "tmk_abcdefghijk1_" + "a" * 52,  # 1 is not base32
        "tmx_abcdefghijkl_" + "a" * 52,
        "tmk-abcdefghijkl-" + "a" * 52,
        " tmk_abcdefghijkl_" + "a" * 51,
        "tmk_abcdefghijkl_" + "a" * 51 + "\n",
        "tmk_abcdefghijkl_" + "a" * 51 + "é",
        "Bearer tmk_abcdefghijkl_" + "a" * 52,
    ],
)
def test_malformed_keys_are_refused_by_their_shape(presented: str) -> None:
    assert parse_key(presented) is None
    decision = decide(None, presented, "/orders", now=T0)
    assert decision == apikeys.KeyDecision(False, Reason.API_KEY_MALFORMED)


@given(st.text(max_size=120))
def test_parse_key_accepts_exactly_the_format(presented: str) -> None:
    parsed = parse_key(presented)
    if parsed is not None:
        assert parsed.key == presented
        assert presented == f"tmk_{parsed.key_id}_{presented[17:]}"


def test_the_stored_digest_is_sha256_of_the_key_and_holds_no_secret() -> None:
    _, key = apikeys.new_key()
    digest = hash_key(key)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == hash_key(key)
    assert key.split("_")[2] not in digest
    _, other = apikeys.new_key()
    assert hash_key(other) != digest


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"authorization", b"Bearer abc.def.ghi")], None),
        ([(b"authorization", b"ApiKey tmk_x")], "tmk_x"),
        ([(b"authorization", b"apikey  tmk_x ")], "tmk_x"),  # the scheme is case-insensitive
        ([(b"x-api-key", b"tmk_x")], "tmk_x"),
        ([(b"X-API-Key", b"tmk_x")], "tmk_x"),
        ([(b"x-api-key", b"tmk_x"), (b"authorization", b"ApiKey tmk_x")], "tmk_x"),
        ([(b"x-api-key", b"tmk_x"), (b"authorization", b"ApiKey tmk_y")], ""),
        ([(b"x-api-key", b"tmk_x"), (b"x-api-key", b"tmk_y")], ""),
        ([(b"x-api-key", b"")], ""),
        ([(b"authorization", b"ApiKey")], ""),
    ],
)
def test_the_presented_key_is_read_from_one_of_two_headers(
    headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    assert presented_api_key(headers) == expected
    assert b"x-api-key" in apikeys.STRIP_HEADERS
    assert b"authorization" in apikeys.STRIP_HEADERS


# --- decisions, pure ----------------------------------------------------------------------


def _record(key: str, **changes: Any) -> KeyRecord:
    parsed = parse_key(key)
    assert parsed is not None
    values: dict[str, Any] = {
        "key_id": parsed.key_id,
        "name": "ci",
        "scopes": ("/orders",),
        "roles": ("reader", "user"),
        "secret_hash": hash_key(key),
        "created_at": int(T0),
    }
    values.update(changes)
    return KeyRecord(**values)


def test_decide_each_rule() -> None:
    key_id, key = apikeys.new_key()
    record = _record(key)
    ok = decide(record, key, "/orders", now=T0)
    assert ok == apikeys.KeyDecision(True, "api-key-valid", key_id, "ci", ("reader", "user"))
    assert ok.principal == f"apikey:{key_id}"
    # the declaration no longer has a role: the key no longer carries it
    assert decide(record, key, "/orders", now=T0, declared_roles={"user"}).roles == ("user",)
    _, wrong = apikeys.new_key(key_id)
    assert decide(record, wrong, "/orders", now=T0).reason == "api-key-invalid"
    _, stranger = apikeys.new_key()
    assert decide(None, stranger, "/orders", now=T0).reason == "api-key-unknown"
    assert decide(record, stranger, "/orders", now=T0).reason == "api-key-unknown"
    assert decide(record, key, "reports", now=T0).reason == "api-key-out-of-scope"
    everywhere = _record(key, scopes=("*",))
    assert decide(everywhere, key, "reports", now=T0).allowed
    expiring = _record(key, expires_at=int(T0) + 60)
    assert decide(expiring, key, "/orders", now=T0 + 59.9).allowed
    assert decide(expiring, key, "/orders", now=T0 + 60).reason == "api-key-expired"
    revoked = _record(key, revoked_at=int(T0))
    assert decide(revoked, key, "/orders", now=T0).reason == "api-key-revoked"
    # who lacks the secret learns nothing, not even that the key is revoked
    assert decide(revoked, wrong, "/orders", now=T0).reason == "api-key-invalid"
    assert not any(decide(r, key, "/orders", now=T0 + 61).allowed for r in (revoked, expiring))


def test_decide_accepts_the_previous_secret_only_during_its_grace() -> None:
    key_id, old = apikeys.new_key()
    _, new = apikeys.new_key(key_id)
    record = _record(
        new, previous_hash=hash_key(old), previous_until=int(T0) + 3600, rotated_at=int(T0)
    )
    assert decide(record, new, "/orders", now=T0).allowed
    assert decide(record, old, "/orders", now=T0 + 3599).allowed
    assert decide(record, old, "/orders", now=T0 + 3600).reason == "api-key-superseded"
    assert decide(record, new, "/orders", now=T0 + 3600).allowed
    # the grace never outlives a revocation or the key's own expiry
    assert decide(
        _record(new, previous_hash=hash_key(old), previous_until=int(T0) + 3600, revoked_at=1),
        old,
        "/orders",
        now=T0,
    ).reason == ("api-key-revoked")
    assert record.status(T0) == "rotating"
    assert record.status(T0 + 3600) == "active"


def test_add_validates_scopes_roles_and_names(config: TrustmeshConfig) -> None:
    assert config.gateway is not None
    routes = config.gateway.routes
    assert apikeys.check_scopes(["reports", "/orders", "reports"], routes) == (
        "reports",
        "/orders",
    )
    assert apikeys.check_scopes(["*"], routes) == ("*",)
    with pytest.raises(UsageError, match=r"unknown route '/nope' \(known routes: /orders, "):
        apikeys.check_scopes(["/nope"], routes)
    with pytest.raises(UsageError, match="at least one scope"):
        apikeys.check_scopes([], routes)
    with pytest.raises(UsageError, match="unknown role 'boss'"):
        apikeys.check_roles(["boss"], config.auth.roles)
    with pytest.raises(UsageError, match="needs MFA"):
        apikeys.check_roles(["admin"], config.auth.roles)
    assert apikeys.check_roles(["reader"], config.auth.roles) == ("reader",)
    assert apikeys.routes_without_api_keys(("/public", "/orders"), routes) == ["/public"]
    for bad in ("", " lead", "x" * 65, "new\nline", "bell\x07"):
        with pytest.raises(UsageError):
            apikeys.check_name(bad)


# --- the store and the verifier, on SQLite files --------------------------------------------


async def test_a_new_key_is_shown_once_and_only_its_digest_is_stored(
    short_tmp: Path, config: TrustmeshConfig, sink: events.MemorySink
) -> None:
    store = await open_keystore(short_tmp)
    try:
        issued = await add_key(
            store, config, name="ci", scopes=["/orders"], roles=["reader"], now=T0, sink=sink
        )
        again = await store.get(issued.record.key_id)
        assert again == issued.record
        assert issued.key not in repr(issued)
        assert issued.key not in repr(issued.record)
    finally:
        await store.close()
    secret = issued.key.split("_")[2]
    files = sorted(keys_db_path(short_tmp).parent.iterdir())
    assert keys_db_path(short_tmp) in files
    assert keys_db_path(short_tmp).stat().st_mode & 0o777 == 0o600
    stored = b"".join(f.read_bytes() for f in files)
    assert hash_key(issued.key).encode() in stored  # the bytes read are the real rows
    assert secret.encode() not in stored
    assert secret.upper().encode() not in stored
    [made] = sink.events
    assert made.reason == "api-key-created"
    assert made.attributes["key_id"] == issued.record.key_id
    assert secret not in made.to_json()
    assert hash_key(issued.key) not in made.to_json()


async def test_verify_ok_wrong_unknown_malformed_out_of_scope(
    verifier: ApiKeyVerifier, config: TrustmeshConfig, sink: events.MemorySink, clock: FakeClock
) -> None:
    issued = await _add(verifier, config, sink, roles=("reader", "user"))
    clock.advance(1)  # past the snapshot taken at open
    ok = await verifier.verify(issued.key, "/orders")
    assert ok.allowed
    assert (ok.reason, ok.principal, ok.roles, ok.name) == (
        "api-key-valid",
        f"apikey:{issued.record.key_id}",
        ("reader", "user"),
        "ci",
    )
    _, wrong = apikeys.new_key(issued.record.key_id)
    assert (await verifier.verify(wrong, "/orders")).reason == "api-key-invalid"
    _, unknown = apikeys.new_key()
    assert (await verifier.verify(unknown, "/orders")).reason == "api-key-unknown"
    assert (await verifier.verify(issued.key[:-1], "/orders")).reason == "api-key-malformed"
    assert (await verifier.verify(issued.key, "reports")).reason == "api-key-out-of-scope"


async def test_a_revocation_is_seen_within_the_refresh_period(
    verifier: ApiKeyVerifier, config: TrustmeshConfig, sink: events.MemorySink, clock: FakeClock
) -> None:
    issued = await _add(verifier, config, sink)
    clock.advance(1)
    assert (await verifier.verify(issued.key, "/orders")).allowed
    record, newly = await revoke_key(
        _store(verifier), issued.record.key_id, now=clock.time(), sink=sink
    )
    assert newly
    assert record.revoked_at == int(clock.time())
    clock.advance(verifier.refresh)  # ≤ 1 s later
    refused = await verifier.verify(issued.key, "/orders")
    assert (refused.allowed, refused.reason) == (False, "api-key-revoked")
    # revoking again changes nothing and records nothing
    _, newly = await revoke_key(_store(verifier), issued.record.key_id, now=clock.time(), sink=sink)
    assert not newly
    assert [e.reason for e in sink.events] == ["api-key-created", "api-key-revoked"]
    with pytest.raises(NotFoundError):
        await revoke_key(_store(verifier), "a" * 12, now=clock.time(), sink=sink)
    with pytest.raises(NotFoundError):
        await revoke_key(_store(verifier), "../etc", now=clock.time(), sink=sink)


async def test_an_expired_key_is_refused(
    verifier: ApiKeyVerifier, config: TrustmeshConfig, sink: events.MemorySink, clock: FakeClock
) -> None:
    issued = await _add(verifier, config, sink, expires_in=timedelta(hours=1))
    assert issued.record.expires_at == int(T0) + 3600
    clock.set(T0 + 3599)
    assert (await verifier.verify(issued.key, "/orders")).allowed
    clock.set(T0 + 3600)
    assert (await verifier.verify(issued.key, "/orders")).reason == "api-key-expired"
    with pytest.raises(ConflictError, match="expired"):
        await rotate_key(_store(verifier), issued.record.key_id, now=clock.time(), sink=sink)


async def test_rotation_keeps_the_old_secret_for_its_grace_only(
    verifier: ApiKeyVerifier, config: TrustmeshConfig, sink: events.MemorySink, clock: FakeClock
) -> None:
    first = await _add(verifier, config, sink, scopes=("/orders", "reports"))
    rotated = await rotate_key(
        _store(verifier), first.record.key_id, grace=timedelta(hours=1), now=T0, sink=sink
    )
    assert rotated.key != first.key
    assert rotated.record.key_id == first.record.key_id
    assert rotated.record.scopes == ("/orders", "reports")
    assert rotated.record.roles == first.record.roles
    assert rotated.record.rotated_at == int(T0)
    assert rotated.record.previous_until == int(T0) + 3600
    clock.set(T0 + 3599)
    assert (await verifier.verify(first.key, "reports")).allowed
    assert (await verifier.verify(rotated.key, "reports")).allowed
    clock.set(T0 + 3600)
    assert (await verifier.verify(first.key, "reports")).reason == "api-key-superseded"
    assert (await verifier.verify(rotated.key, "reports")).allowed
    # without grace the old secret is refused at once; only the last one is remembered
    third = await rotate_key(_store(verifier), first.record.key_id, now=clock.time(), sink=sink)
    clock.advance(1)
    assert (await verifier.verify(rotated.key, "reports")).reason == "api-key-superseded"
    assert (await verifier.verify(first.key, "reports")).reason == "api-key-invalid"
    assert (await verifier.verify(third.key, "reports")).allowed
    rotations = [e for e in sink.events if e.reason == "api-key-rotated"]
    assert [e.attributes["grace_seconds"] for e in rotations] == [3600, 0]
    for made in sink.events:
        for key in (first.key, rotated.key, third.key):
            assert key.split("_")[2] not in made.to_json()
    with pytest.raises(UsageError, match="grace"):
        await rotate_key(
            _store(verifier), first.record.key_id, grace=timedelta(days=8), now=T0, sink=sink
        )
    await revoke_key(_store(verifier), first.record.key_id, now=clock.time(), sink=sink)
    with pytest.raises(ConflictError, match="revoked"):
        await rotate_key(_store(verifier), first.record.key_id, now=clock.time(), sink=sink)
    with pytest.raises(NotFoundError):
        await rotate_key(_store(verifier), "b" * 12, now=clock.time(), sink=sink)


async def test_a_hot_key_and_a_flood_of_random_keys_cost_no_queries(
    verifier: ApiKeyVerifier, config: TrustmeshConfig, sink: events.MemorySink, clock: FakeClock
) -> None:
    issued = await _add(verifier, config, sink)
    clock.advance(1)
    assert (await verifier.verify(issued.key, "/orders")).allowed  # loads the snapshot
    with queries(_store(verifier)) as seen:
        for _ in range(200):
            assert (await verifier.verify(issued.key, "/orders")).allowed
        for _ in range(500):
            decision = await verifier.verify(apikeys.new_key()[1], "/orders")
            assert decision.reason == "api-key-unknown"
            assert (await verifier.verify("tmk_" + "x" * 70, "/orders")).reason == (
                "api-key-malformed"
            )
    assert seen == []
    # past the refresh period, however many requests arrive at once, one load serves all
    clock.advance(verifier.refresh)
    with queries(_store(verifier)) as seen:
        decisions = await asyncio.gather(
            *(verifier.verify(issued.key, "/orders") for _ in range(50)),
            *(verifier.verify(apikeys.new_key()[1], "/orders") for _ in range(50)),
        )
    assert [d.allowed for d in decisions] == [True] * 50 + [False] * 50
    assert len(seen) == 1


async def test_an_unreadable_store_fails_closed_and_is_retried_once_per_period(
    verifier: ApiKeyVerifier, config: TrustmeshConfig, sink: events.MemorySink, clock: FakeClock
) -> None:
    issued = await _add(verifier, config, sink)
    store = _store(verifier)
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE gateway_api_keys RENAME TO moved_away"))
    clock.advance(1)
    with queries(store) as seen:
        with pytest.raises(UnavailableError):
            await verifier.verify(issued.key, "/orders")
        for _ in range(20):  # no query per request while it is down
            with pytest.raises(UnavailableError):
                await verifier.verify(issued.key, "/orders")
    assert len(seen) == 1
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE moved_away RENAME TO gateway_api_keys"))
    clock.advance(verifier.refresh)
    assert (await verifier.verify(issued.key, "/orders")).allowed


async def test_the_refresh_period_cannot_exceed_a_second(short_tmp: Path) -> None:
    store = await open_keystore(short_tmp)
    try:
        with pytest.raises(UsageError):
            ApiKeyVerifier(store, refresh=2.0)
        with pytest.raises(UsageError):
            ApiKeyVerifier(store, refresh=0)
    finally:
        await store.close()


async def _exercise_store(store: SqlKeyStore, config: TrustmeshConfig) -> None:
    sink = events.MemorySink()
    issued = await add_key(store, config, name="pg", scopes=["*"], now=T0, sink=sink)
    assert await store.all() == [issued.record]
    rotated = await rotate_key(
        store, issued.record.key_id, grace=timedelta(minutes=5), now=T0 + 1, sink=sink
    )
    assert rotated.record.previous_hash == issued.record.secret_hash
    assert rotated.record.secret_hash == hash_key(rotated.key)
    verifier = ApiKeyVerifier(store, clock=FakeClock(T0 + 2).time)
    assert (await verifier.verify(issued.key, "anything")).allowed
    record, newly = await store.revoke(issued.record.key_id, int(T0) + 3)
    assert newly
    assert record.revoked_at == int(T0) + 3


@pytest.mark.services
async def test_store_on_postgresql(config: TrustmeshConfig) -> None:
    from services import require_service

    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    name = f"tm_keys_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        store = SqlKeyStore(create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"))
        try:
            await store.create()
            await _exercise_store(store, config)
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()
