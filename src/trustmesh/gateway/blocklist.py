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

``now`` is a parameter. Given a ``path`` (the gateway keeps ``<state>/gateway/
blocks.json``), every change is written there before it is acknowledged (a new file,
fsynced, renamed over the old, 0600), and a new list reads it back: a restart lifts no
block that has not ended. A file that cannot be read is refused with its path named
(blocks lost silently would let the blocked back in), never taken as empty.

Several gateway processes (``gateway.workers``) share that file. A change is made under
an exclusive lock on ``blocks.lock`` beside it, on the list read back from the file (so
no process's change overwrites another's), and each process looks at the file again
when it has changed, at most every :data:`LOOK_EVERY` seconds: a block made through one
process holds in every other within that time. A file that cannot be read then keeps
the blocks in force (it is said in the log), never lifts them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from trustmesh.errors import ConfigError, ConflictError, UnavailableError, UsageError
from trustmesh.policy.addresses import Address, embedded_ipv4, parse_address

__all__ = ["LOOK_EVERY", "MAX_BLOCKS", "MAX_SECONDS", "Block", "Blocklist"]

log = logging.getLogger("trustmesh.gateway")
#: How often (seconds) a process looks whether another changed the shared file.
LOOK_EVERY: Final = 0.25

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

    def __init__(self, path: Path | None = None, *, now: float = 0.0) -> None:
        self._blocks: dict[Address, Block] = {}
        self._lock = threading.Lock()
        self._path = path
        self._seen: tuple[int, int, int] | None = None  # the file as last read or written
        self._next_look = now + LOOK_EVERY
        if path is not None:
            self._seen = _signature(path)
            self._blocks = _in_force(_load(path), now)

    def block(self, address: str, *, seconds: float, reason: str, by: str, now: float) -> Block:
        """Block ``address`` for ``seconds`` (at most :data:`MAX_SECONDS`)."""
        if not 0 < seconds <= MAX_SECONDS:
            raise UsageError(f"a block lasts from 1 second to {MAX_SECONDS} seconds")
        key = _canonical(address)
        with self._lock, self._shared(now):
            old = self._blocks.get(key)
            if old is None and len(self._blocks) >= MAX_BLOCKS:
                self._expire(now)
                if len(self._blocks) >= MAX_BLOCKS:
                    raise ConflictError(f"{MAX_BLOCKS} addresses are blocked already")
            until = max(now + seconds, old.until if old is not None else 0.0)
            block = Block(str(key), until, reason[:256], by[:256])
            self._blocks[key] = block
            try:
                self._save()
            except BaseException:
                if old is None:
                    del self._blocks[key]
                else:
                    self._blocks[key] = old
                raise
            return block

    def unblock(self, address: str, now: float = 0.0) -> Block | None:
        """Lift the block on ``address``; the block lifted, or None if there was none."""
        key = _canonical(address)
        with self._lock, self._shared(now):
            old = self._blocks.pop(key, None)
            if old is not None:
                try:
                    self._save()
                except BaseException:
                    self._blocks[key] = old
                    raise
            return old

    def blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` (as the gateway established it) is blocked at ``now``."""
        if now >= self._next_look and self._path is not None:
            self._look(now)
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
        if self._path is not None:
            self._look(now)
        with self._lock:
            self._expire(now)
            return sorted(self._blocks.values(), key=lambda b: b.until)

    def _expire(self, now: float) -> None:
        for key in [k for k, b in self._blocks.items() if b.until <= now]:
            del self._blocks[key]

    def _look(self, now: float) -> None:
        """Read the file again if another process changed it since."""
        if self._path is None:
            return
        self._next_look = now + LOOK_EVERY
        seen = _signature(self._path)
        if seen == self._seen:
            return
        try:
            found = _in_force(_load(self._path), now)
        except ConfigError as exc:
            log.error("gateway: %s; the blocks in force stay", exc.detail)
            return
        with self._lock:
            self._blocks, self._seen = found, seen

    @contextlib.contextmanager
    def _shared(self, now: float) -> Iterator[None]:
        """Hold the file's lock across a change, on the list as the file has it (the
        list's own lock held)."""
        if self._path is None:
            yield
            return
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._blocks = _in_force(_load(self._path), now)
            yield
            self._seen = _signature(self._path)
        finally:
            os.close(fd)  # and with it the lock

    def _save(self) -> None:
        """Write the list (the lock held): durable before the change is acknowledged."""
        if self._path is None:
            return
        try:
            _write(self._path, self._blocks.values())
        except OSError as exc:
            raise UnavailableError(f"cannot write the blocklist: {exc.strerror}") from None

    @classmethod
    def of_state(cls, state: Path, now: float) -> Blocklist:
        """The gateway's blocks, kept in ``<state>/gateway/blocks.json``."""
        return cls(state.absolute() / "gateway" / "blocks.json", now=now)


def _in_force(blocks: Iterable[Block], now: float) -> dict[Address, Block]:
    return {_canonical(b.address): b for b in blocks if b.until > now}


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (its inode) or written; None: no file."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return (-1, -1, -1)  # unreadable: _load says why
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def _write(path: Path, blocks: Iterable[Block]) -> None:
    doc = {"blocks": [asdict(b) for b in blocks]}
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(doc, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load(path: Path) -> list[Block]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read the blocklist {path}: {exc.strerror}") from None
    try:
        doc: Any = json.loads(raw)
        return [
            Block(str(b["address"]), float(b["until"]), str(b["reason"]), str(b["by"]))
            for b in doc["blocks"]
        ]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"the blocklist {path} is not one trustmesh wrote") from None
