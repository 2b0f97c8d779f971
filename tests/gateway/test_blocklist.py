"""The gateway's runtime blocks (:mod:`trustmesh.gateway.blocklist`): one address until a
time, whatever its spelling; the later end wins; an ended block no longer holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustmesh.errors import ConfigError, UnavailableError, UsageError
from trustmesh.gateway.blocklist import MAX_SECONDS, Blocklist

T0 = 1_800_000_000.0


def test_a_block_holds_until_its_end_then_is_forgotten() -> None:
    blocks = Blocklist()
    blocks.block("203.0.113.9", seconds=60, reason="r", by="audit", now=T0)
    assert blocks.blocked("203.0.113.9", T0 + 59)
    assert not blocks.blocked("203.0.113.10", T0)
    assert not blocks.blocked("203.0.113.9", T0 + 60)
    assert blocks.active(T0 + 60) == []


@pytest.mark.parametrize(
    "spelling", ["::ffff:203.0.113.9", "64:ff9b::cb00:7109", "2002:cb00:7109::1"]
)
def test_every_spelling_of_a_blocked_ipv4_address_is_blocked(spelling: str) -> None:
    blocks = Blocklist()
    blocks.block("203.0.113.9", seconds=60, reason="", by="audit", now=T0)
    assert blocks.blocked(spelling, T0)


def test_an_ipv6_block_and_its_canonical_spelling() -> None:
    blocks = Blocklist()
    made = blocks.block("2001:DB8:0:0::1", seconds=60, reason="", by="operator", now=T0)
    assert made.address == "2001:db8::1"
    assert blocks.blocked("2001:db8::1", T0)
    assert blocks.unblock("2001:0db8::0001") == made
    assert not blocks.blocked("2001:db8::1", T0)
    assert blocks.unblock("2001:db8::1") is None


def test_blocking_again_keeps_the_later_end() -> None:
    blocks = Blocklist()
    blocks.block("198.51.100.1", seconds=3600, reason="", by="audit", now=T0)
    again = blocks.block("198.51.100.1", seconds=60, reason="", by="audit", now=T0 + 10)
    assert again.until == T0 + 3600
    assert blocks.blocked("198.51.100.1", T0 + 3000)


@pytest.mark.parametrize("address", ["203.0.113.0/24", "fe80::1%eth0", "example.com", "", "1" * 80])
def test_what_is_not_one_address_is_refused(address: str) -> None:
    with pytest.raises(UsageError, match="one IPv4 or IPv6 address"):
        Blocklist().block(address, seconds=60, reason="", by="audit", now=T0)


@pytest.mark.parametrize("seconds", [0, -1, MAX_SECONDS + 1])
def test_a_duration_out_of_range_is_refused(seconds: int) -> None:
    with pytest.raises(UsageError, match="lasts from 1 second"):
        Blocklist().block("203.0.113.9", seconds=seconds, reason="", by="audit", now=T0)


def test_what_is_not_an_address_is_not_blocked() -> None:
    blocks = Blocklist()
    blocks.block("203.0.113.9", seconds=60, reason="", by="audit", now=T0)
    assert not blocks.blocked("not-an-address", T0)


def test_blocks_outlive_a_restart_until_they_end(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "blocks.json"
    blocks = Blocklist(path)
    blocks.block("203.0.113.9", seconds=60, reason="brute force", by="audit", now=T0)
    blocks.block("198.51.100.7", seconds=600, reason="spray", by="operator", now=T0)
    blocks.unblock("198.51.100.7")
    blocks.block("192.0.2.1", seconds=10, reason="short", by="audit", now=T0)
    assert path.stat().st_mode & 0o777 == 0o600
    again = Blocklist(path, now=T0 + 30)  # the short block has ended by then
    assert again.blocked("203.0.113.9", T0 + 30)
    assert not again.blocked("198.51.100.7", T0 + 30)  # lifted before the restart
    assert not again.blocked("192.0.2.1", T0 + 30)
    assert [b.reason for b in again.active(T0 + 30)] == ["brute force"]
    assert not again.blocked("203.0.113.9", T0 + 61)


def test_a_blocklist_file_it_did_not_write_is_refused_not_taken_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    path.write_text('{"blocks": [{"address": "203.0.113.9"}]}')
    with pytest.raises(ConfigError, match=r"blocks\.json"):
        Blocklist(path)


def test_a_block_that_cannot_be_written_is_not_in_force(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    blocks = Blocklist(path)
    blocks.block("203.0.113.9", seconds=60, reason="", by="audit", now=T0)
    path.with_suffix(".tmp").mkdir()  # where the next version would be written
    with pytest.raises(UnavailableError, match="cannot write the blocklist"):
        blocks.block("198.51.100.7", seconds=60, reason="", by="audit", now=T0)
    assert not blocks.blocked("198.51.100.7", T0)
    with pytest.raises(UnavailableError):
        blocks.unblock("203.0.113.9")
    assert blocks.blocked("203.0.113.9", T0)
    assert Blocklist(path).blocked("203.0.113.9", T0)
