"""Worker processes sign with the CA the leader stored, and follow its rotations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from trustmesh import crypto
from trustmesh.errors import StateError
from trustmesh.identity.ca import CASettings, CertificateAuthority
from trustmesh.identity.store import SqliteIdentityStore

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SETTINGS = CASettings(
    trust_domain="follow.example",
    root_ttl=dt.timedelta(days=30),
    ca_ttl=dt.timedelta(days=2),
    max_svid_ttl=dt.timedelta(hours=1),
    publish_delay=dt.timedelta(minutes=5),
)


def test_follower_needs_a_leader_first(tmp_path: Path) -> None:
    store = SqliteIdentityStore(tmp_path / "identity.db")
    follower = CertificateAuthority(SETTINGS, store, crypto.SealKey.generate(), follower=True)
    with pytest.raises(StateError):
        follower.load(NOW)


def test_follower_tracks_the_leaders_rotation(tmp_path: Path) -> None:
    key = crypto.SealKey.generate()
    leader = CertificateAuthority(SETTINGS, SqliteIdentityStore(tmp_path / "identity.db"), key)
    leader.load(NOW)
    follower = CertificateAuthority(
        SETTINGS, SqliteIdentityStore(tmp_path / "identity.db"), key, follower=True
    )
    follower.load(NOW)
    assert follower.x509_roots == leader.x509_roots
    assert follower.issuer.cert == leader.issuer.cert
    assert follower.tick(NOW) is False  # nothing changed

    leader.force_rotation(NOW)
    assert follower.tick(NOW) is True
    assert len(follower.x509_roots) == 2
    assert follower.issuer.cert == leader.issuer.cert  # still the old signer

    later = NOW + SETTINGS.publish_delay + dt.timedelta(seconds=1)
    assert leader.tick(later) is True
    follower.tick(later)
    assert follower.issuer.cert == leader.issuer.cert  # the new signer
    # a follower never rotates by itself, whatever the time
    much_later = NOW + SETTINGS.root_ttl
    assert follower.tick(much_later) is False
    assert follower.issuer.cert == leader.issuer.cert
