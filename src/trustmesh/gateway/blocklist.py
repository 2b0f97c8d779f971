"""Client addresses blocked for a while: what an automated response (the audit
collector's ``block-address``) or the operator puts in force at runtime, beside the
declared ``deny_ips``.

A block names one address (an IPv4 or IPv6 address, never a network: a network is the
declaration's business) until a time; it holds for every spelling of that address
(an IPv4 client met through an IPv4-mapped or NAT64 IPv6 form is the same client, as in
:mod:`trustmesh.gateway.iprules`). Blocking an address already blocked keeps the later
end; an ended block is forgotten at the next look. At most :data:`MAX_BLOCKS` are in
force: beyond, a new block is refused (an attacker who could make the collector block
every address it controls would otherwise grow the list without bound).

Pure: ``now`` is a parameter. The list lives in the gateway's memory: a restart lifts
every block (the collector's response log still says what was blocked and until when).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from trustmesh.errors import ConflictError, UsageError
from trustmesh.policy.addresses import Address, embedded_ipv4, parse_address

__all__ = ["MAX_BLOCKS", "MAX_SECONDS", "Block", "Blocklist"]

#: The most blocks in force at once.
MAX_BLOCKS: Final = 100_000
#: The longest a block may last (30 days).
MAX_SECONDS: Final = 30 * 24 * 3600


@dataclass(frozen=True)
class Block:
    address: str  # the canonical spelling
    until: float  # epoch seconds
    reason: str
    by: str


def _canonical(text: str) -> Address:
    address = parse_address(text) if isinstance(text, str) and len(text) <= 64 else None
    if address is None:
        raise UsageError("address must be one IPv4 or IPv6 address (no network, no zone)")
    v4 = embedded_ipv4(address)
    return address if v4 is None else v4


class Blocklist:
    """Blocked addresses and their ends; safe to share between the admin API and the
    request path (one lock, held only for a dict operation)."""

    def __init__(self) -> None:
        self._blocks: dict[Address, Block] = {}
        self._lock = threading.Lock()

    def block(self, address: str, *, seconds: float, reason: str, by: str, now: float) -> Block:
        """Block ``address`` for ``seconds`` (at most :data:`MAX_SECONDS`)."""
        if not 0 < seconds <= MAX_SECONDS:
            raise UsageError(f"a block lasts from 1 second to {MAX_SECONDS} seconds")
        key = _canonical(address)
        with self._lock:
            old = self._blocks.get(key)
            if old is None and len(self._blocks) >= MAX_BLOCKS:
                self._expire(now)
                if len(self._blocks) >= MAX_BLOCKS:
                    raise ConflictError(f"{MAX_BLOCKS} addresses are blocked already")
            until = max(now + seconds, old.until if old is not None else 0.0)
            block = Block(str(key), until, reason[:256], by[:256])
            self._blocks[key] = block
            return block

    def unblock(self, address: str) -> Block | None:
        """Lift the block on ``address``; the block lifted, or None if there was none."""
        key = _canonical(address)
        with self._lock:
            return self._blocks.pop(key, None)

    def blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` (as the gateway established it) is blocked at ``now``."""
        if not self._blocks:  # the common case: one attribute read
            return False
        ip = parse_address(address)
        if ip is None:
            return False  # not an address: the IP rules refuse it already
        v4 = embedded_ipv4(ip)
        key = ip if v4 is None else v4
        block = self._blocks.get(key)
        if block is None:
            return False
        if block.until > now:
            return True
        with self._lock:
            if self._blocks.get(key) is block:
                del self._blocks[key]
        return False

    def active(self, now: float) -> list[Block]:
        with self._lock:
            self._expire(now)
            return sorted(self._blocks.values(), key=lambda b: b.until)

    def _expire(self, now: float) -> None:
        for key in [k for k, b in self._blocks.items() if b.until <= now]:
            del self._blocks[key]
