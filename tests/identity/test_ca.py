"""The workload CA for real: real keys, a real SQLite store, a real sealing key, a fake clock.

Rotation as a relying party sees it: the next root is in the bundle before it signs, and
the old one stays until nothing chains to it. Keys at rest are sealed, bound to their slot."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from trustmesh import crypto
from trustmesh.errors import CryptoError, InvalidTokenError, SealError, StateError
from trustmesh.identity.ca import CASettings, CertificateAuthority, Generation
from trustmesh.identity.rotation import Status
from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.testing.clock import FakeClock

TD = "example.org"
SPIFFE_ID = "spiffe://example.org/payments/api"
NOW = dt.datetime(2031, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
SETTINGS = CASettings(
    trust_domain=TD,
    root_ttl=dt.timedelta(days=30),
    ca_ttl=dt.timedelta(days=7),
    max_svid_ttl=dt.timedelta(hours=1),
    publish_delay=dt.timedelta(minutes=5),
)


def svid(audience: str, leeway: float = 0.0) -> crypto.Expect:
    """What a JWT-SVID must be (JWT-SVID §3): for ``audience``, with exp, aud and sub."""
    return crypto.Expect(audience=audience, required=("exp", "aud", "sub"), leeway=leeway)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "identity.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteIdentityStore]:
    s = SqliteIdentityStore(db_path)
    yield s
    s.close()


@pytest.fixture
def seal_key() -> crypto.SealKey:
    return crypto.SealKey.generate()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def ca(
    store: SqliteIdentityStore, seal_key: crypto.SealKey, clock: FakeClock
) -> CertificateAuthority:
    authority = CertificateAuthority(SETTINGS, store, seal_key)
    authority.load(clock())
    return authority


def issue(
    ca: CertificateAuthority, now: dt.datetime, ttl: dt.timedelta = SETTINGS.max_svid_ttl
) -> list[x509.Certificate]:
    """An SVID as the identity service hands it out: leaf, then the chain tail."""
    leaf, _ = crypto.issue_x509_svid(SPIFFE_ID, ca.issuer, now=now, ttl=ttl)
    return [leaf, *ca.chain_tail]


def verifies(
    chain: list[x509.Certificate],
    roots: tuple[x509.Certificate, ...] | list[x509.Certificate],
    now: dt.datetime,
) -> bool:
    try:
        return crypto.verify_svid_chain(chain, roots, now=now) == SPIFFE_ID
    except CryptoError:
        return False


def fingerprints(certs: tuple[x509.Certificate, ...]) -> list[str]:
    return [crypto.fingerprint_sha256(c) for c in certs]


# -- first start ---------------------------------------------------------------------------------


def test_first_load_creates_one_active_generation(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    (only,) = ca.generations
    assert only.status is Status.ACTIVE
    assert ca.active is only
    assert len(ca.x509_roots) == 1
    assert list(ca.jwt_public_keys) == [only.jwt_kid]
    assert crypto.uri_sans(ca.x509_roots[0]) == [f"spiffe://{TD}"]
    assert ca.chain_tail == (only.signing,)


def test_the_issuers_chain_verifies_an_svid(ca: CertificateAuthority, clock: FakeClock) -> None:
    chain = issue(ca, clock())
    assert crypto.verify_svid_chain(chain, ca.x509_roots, now=clock()) == SPIFFE_ID


def test_a_second_load_at_the_same_time_changes_nothing(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    roots = fingerprints(ca.x509_roots)
    assert ca.tick(clock()) is False
    assert fingerprints(ca.x509_roots) == roots


# -- rotation --------------------------------------------------------------------------------------


def test_forced_rotation_publishes_then_signs_then_retires(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    old = ca.active
    old_root = old.root
    before = issue(ca, clock())

    # 1. published: in both bundles, signing nothing yet
    ca.force_rotation(clock())
    assert len(ca.x509_roots) == 2
    (new,) = [g for g in ca.generations if g.status is Status.PREPARED]
    assert set(ca.jwt_public_keys) == {old.jwt_kid, new.jwt_kid}
    assert ca.active.id == old.id
    published = issue(ca, clock())
    assert verifies(published, [old_root], clock())
    assert not verifies(published, [new.root], clock())
    assert verifies(published, ca.x509_roots, clock())

    # 2. not a second before the publish delay
    clock.advance(SETTINGS.publish_delay - SECOND)
    ca.tick(clock())
    assert ca.active.id == old.id
    last_old = issue(ca, clock())  # the last SVID the old generation signs
    assert verifies(last_old, [old_root], clock())

    # 3. activation: new SVIDs chain to the new root; both roots still published
    clock.advance(SECOND)
    assert ca.tick(clock()) is True
    assert ca.active.id == new.id
    assert [g.status for g in ca.generations if g.id == old.id] == [Status.RETIRING]
    after = issue(ca, clock())
    assert verifies(after, [new.root], clock())
    assert not verifies(after, [old_root], clock())
    assert fingerprints(ca.x509_roots) == fingerprints((old_root, new.root))
    assert set(ca.jwt_public_keys) == {old.jwt_kid, new.jwt_kid}
    for chain in (before, published, last_old, after):
        assert verifies(chain, ca.x509_roots, clock())

    # 4. the old root stays while anything it signed is still valid ...
    activated = clock()
    clock.advance(SETTINGS.max_svid_ttl - SECOND)
    ca.tick(clock())
    assert len(ca.x509_roots) == 2
    assert verifies(last_old, ca.x509_roots, clock())

    # ... and is dropped after
    clock.advance(2 * SECOND)
    assert clock() == activated + SETTINGS.max_svid_ttl + SECOND
    assert ca.tick(clock()) is True
    assert fingerprints(ca.x509_roots) == fingerprints((new.root,))
    assert list(ca.jwt_public_keys) == [new.jwt_kid]
    assert [g.id for g in ca.generations] == [new.id]
    assert not verifies(last_old, ca.x509_roots, clock())  # expired and untrusted alike
    assert verifies(issue(ca, clock()), ca.x509_roots, clock())


def test_a_jwt_of_a_retired_generation_is_refused(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    old = ca.active
    claims = {"sub": SPIFFE_ID, "aud": "svc", "exp": int((NOW + dt.timedelta(days=1)).timestamp())}
    token = crypto.sign_jwt(claims, old.jwt_key, kid=old.jwt_kid)
    ca.force_rotation(clock())
    clock.advance(SETTINGS.publish_delay)
    ca.tick(clock())
    now = clock().timestamp()
    assert (
        crypto.verify_jwt(token, ca.jwt_public_keys, svid(audience="svc"), now=now)["sub"]
        == SPIFFE_ID
    )
    clock.advance(SETTINGS.max_svid_ttl + SECOND)
    ca.tick(clock())
    with pytest.raises(InvalidTokenError) as info:
        crypto.verify_jwt(token, ca.jwt_public_keys, svid(audience="svc"), now=clock().timestamp())
    assert info.value.reason == "token-unknown-key"


def test_force_rotation_twice_prepares_once(ca: CertificateAuthority, clock: FakeClock) -> None:
    ca.force_rotation(clock())
    ca.force_rotation(clock() + SECOND)
    assert [g.status for g in ca.generations] == [Status.ACTIVE, Status.PREPARED]


def test_scheduled_rotation_activates_a_valid_signing_ca(
    store: SqliteIdentityStore, seal_key: crypto.SealKey
) -> None:
    settings = CASettings(
        trust_domain=TD,
        root_ttl=dt.timedelta(days=30),
        ca_ttl=dt.timedelta(days=2),  # like the defaults: a signing CA far shorter than the root
        max_svid_ttl=dt.timedelta(hours=1),
    )
    ca = CertificateAuthority(settings, store, seal_key)
    ca.load(NOW)
    ca.tick(NOW + dt.timedelta(days=15))  # half of the root's life: prepare
    activation = NOW + dt.timedelta(days=25)  # five sixths: activate
    assert ca.tick(activation) is True
    assert ca.active.id == 2
    chain = issue(ca, activation)
    assert crypto.verify_svid_chain(chain, ca.x509_roots, now=activation) == SPIFFE_ID


# -- persistence -----------------------------------------------------------------------------------


def test_reopening_with_the_same_seal_key_restores_the_same_ca(
    ca: CertificateAuthority, db_path: Path, seal_key: crypto.SealKey, clock: FakeClock
) -> None:
    ca.force_rotation(clock())
    reopened_store = SqliteIdentityStore(db_path)
    try:
        again = CertificateAuthority(SETTINGS, reopened_store, seal_key)
        again.load(clock())
        assert fingerprints(again.x509_roots) == fingerprints(ca.x509_roots)
        assert set(again.jwt_public_keys) == set(ca.jwt_public_keys)
        assert [(g.id, g.status, g.activate_at) for g in again.generations] == [
            (g.id, g.status, g.activate_at) for g in ca.generations
        ]
        # the restored private keys are the real ones: an SVID it issues verifies
        assert verifies(issue(again, clock()), ca.x509_roots, clock())
        assert crypto.private_key_to_der(again.active.root_key) == crypto.private_key_to_der(
            ca.active.root_key
        )
    finally:
        reopened_store.close()


def test_reopening_with_another_seal_key_fails(
    ca: CertificateAuthority, db_path: Path, clock: FakeClock
) -> None:
    reopened_store = SqliteIdentityStore(db_path)
    try:
        with pytest.raises(SealError):
            CertificateAuthority(SETTINGS, reopened_store, crypto.SealKey.generate()).load(clock())
    finally:
        reopened_store.close()


def test_reopening_for_another_trust_domain_fails(
    ca: CertificateAuthority, store: SqliteIdentityStore, seal_key: crypto.SealKey, clock: FakeClock
) -> None:
    other = CASettings(
        trust_domain="other.example",
        root_ttl=SETTINGS.root_ttl,
        ca_ttl=SETTINGS.ca_ttl,
        max_svid_ttl=SETTINGS.max_svid_ttl,
    )
    with pytest.raises(StateError, match="another trust domain"):
        CertificateAuthority(other, store, seal_key).load(clock())


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((1, "root_key"), (1, "signing_key")),
        ((1, "jwt_key"), (1, "root_key")),
        ((2, "root_key"), (1, "root_key")),
    ],
)
def test_a_sealed_key_swapped_into_another_slot_is_refused(
    ca: CertificateAuthority,
    store: SqliteIdentityStore,
    seal_key: crypto.SealKey,
    clock: FakeClock,
    source: tuple[int, str],
    target: tuple[int, str],
) -> None:
    """Someone with write access to the database (not the seal key) swaps sealed keys,
    e.g. to make the JWT key sign certificates: each blob is bound to its slot."""
    ca.force_rotation(clock())
    docs = {g.id: g for g in store.load_generations()}
    docs[target[0]].doc[target[1]] = docs[source[0]].doc[source[1]]
    store.save_generations(list(docs.values()))
    with pytest.raises(SealError):
        CertificateAuthority(SETTINGS, store, seal_key).load(clock())


def _private_material(generations: list[Generation]) -> list[bytes]:
    out = []
    for g in generations:
        for key in (g.root_key, g.signing_key, g.jwt_key):
            der = crypto.private_key_to_der(key)
            out += [
                der,
                base64.b64encode(der),
                base64.urlsafe_b64encode(der),
                der.hex().encode(),
                key.private_numbers().private_value.to_bytes(32, "big"),
            ]
    return out


def test_no_private_key_is_stored_in_the_clear(
    ca: CertificateAuthority, store: SqliteIdentityStore, clock: FakeClock
) -> None:
    seen: dict[int, Generation] = {g.id: g for g in ca.generations}
    ca.force_rotation(clock())
    seen |= {g.id: g for g in ca.generations}
    clock.advance(SETTINGS.publish_delay)
    ca.tick(clock())
    seen |= {g.id: g for g in ca.generations}
    clock.advance(dt.timedelta(days=4))  # past the signing CA's half-life: a renewal
    ca.tick(clock())
    seen |= {g.id: g for g in ca.generations}
    material = _private_material(list(seen.values()))
    assert len(seen) == 2

    files = [store.path, store.path.with_name(store.path.name + "-wal")]
    assert files[1].exists()  # WAL mode: the latest writes sit here until a checkpoint
    for path in files:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        start = data.find(b"-----BEGIN ")
        while start >= 0:
            assert data[start:].startswith(b"-----BEGIN CERTIFICATE-----"), path
            start = data.find(b"-----BEGIN ", start + 1)
        for secret in material:
            assert secret not in data, path
    assert b"-----BEGIN CERTIFICATE-----" in b"".join(p.read_bytes() for p in files)
