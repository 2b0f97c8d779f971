"""Unix workload attestation: who is at the other end of the Workload API socket.

The kernel says who connected (``SO_PEERCRED``: pid, uid, gid). PIDs are reused, so
trustmesh holds a *pidfd* for the peer — from ``SO_PEERPIDFD`` (Linux ≥ 6.5), which names
exactly the process that connected, else from ``pidfd_open(pid)`` — reads the process's
facts from ``/proc/<pid>``, and then checks through the pidfd that the process is still
alive: if it had exited, the pid may name another process and the facts are refused.

The executable is identified by the SHA-256 of the file the kernel runs
(``/proc/<pid>/exe``), never by argv, which any process can set to anything.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import select
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from trustmesh.errors import AttestationError
from trustmesh.platform.procfs import process_alive as process_alive
from trustmesh.platform.procfs import start_time_of
from trustmesh.reasons import Reason

#: getsockopt option number on Linux (include/uapi/asm-generic/socket.h); Python 3.11
#: does not name it.
SO_PEERPIDFD = 77
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    start_time: int  # clock ticks since boot: (pid, start_time) is unique per boot
    uid: int
    gid: int
    exe_path: str
    exe_sha256: str | None  # None: too large to hash (see MAX_HASHED_EXECUTABLE)

    def selectors(self) -> frozenset[str]:
        found = {
            f"unix:uid:{self.uid}",
            f"unix:gid:{self.gid}",
            f"unix:path:{self.exe_path}",
        }
        if self.exe_sha256 is not None:
            found.add(f"unix:sha256:{self.exe_sha256}")
        user = _user_name(self.uid)
        if user:
            found.add(f"unix:user:{user}")
        group = _group_name(self.gid)
        if group:
            found.add(f"unix:group:{group}")
        return frozenset(found)


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


#: Executables larger than this are not hashed (a process cannot make the service read
#: gigabytes); such a process presents no ``unix:sha256`` selector.
MAX_HASHED_EXECUTABLE = 512 << 20


class NotHashedYet(Exception):
    """The executable's digest is not cached: hashing it means reading the whole file,
    which a caller on an event loop does in a thread instead (see ``cached_only``)."""


class ExecutableHasher:
    """SHA-256 of executables, cached (LRU) by (device, inode, size, mtime, ctime) of the
    file actually opened through ``/proc/<pid>/exe``: a replaced file has a new key.
    Thread-safe: a cache miss is hashed off the event loop."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._cache: OrderedDict[tuple[int, int, int, int, int], str] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def digest(self, pid: int, *, cached_only: bool = False) -> str | None:
        """The digest of ``pid``'s executable; with ``cached_only``, raise
        :class:`NotHashedYet` rather than read the file."""
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if st.st_size > MAX_HASHED_EXECUTABLE:
                return None
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with self._lock:
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    return cached
            if cached_only:
                raise NotHashedYet
            h = hashlib.sha256()
            with os.fdopen(os.dup(fd), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            with self._lock:
                self._cache[key] = digest
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
            return digest
        finally:
            os.close(fd)


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that ``/proc/<pid>/stat`` start times use."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def _alive(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)


def attest_socket(
    sock: socket.socket,
    hasher: ExecutableHasher,
    accepted_at: int | None = None,
    *,
    cached_only: bool = False,
) -> ProcessInfo:
    """Attest the process at the other end of a connected unix socket.

    ``accepted_at`` (boot ticks) is when the connection was accepted: where the kernel
    cannot pin the peer (no ``SO_PEERPIDFD``), a process that started after that cannot
    be the one that connected — it reused the pid — and is refused.

    With ``cached_only``, every step is a short system call (safe on an event loop), and
    :class:`NotHashedYet` is raised where the executable would have to be read.
    """
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError as exc:
        raise AttestationError(
            f"no peer credentials: {exc}", reason=Reason.ATTESTATION_FAILED
        ) from None
    pidfd, pinned = _peer_pidfd(sock, pid)
    try:
        info = _inspect(pid, uid, gid, pidfd, hasher, cached_only)
    finally:
        os.close(pidfd)
    if not pinned and (accepted_at is None or info.start_time > accepted_at):
        raise AttestationError(
            "the process holding the peer's pid started after the connection: pid reuse",
            reason=Reason.PROCESS_EXITED,
        )
    return info


def attest_pid(pid: int, uid: int, gid: int, hasher: ExecutableHasher) -> ProcessInfo:
    """Attest a process by pid (tests and tools; the service uses :func:`attest_socket`)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        raise AttestationError("process is gone", reason=Reason.PROCESS_EXITED) from None
    try:
        return _inspect(pid, uid, gid, pidfd, hasher)
    finally:
        os.close(pidfd)


def _peer_pidfd(sock: socket.socket, pid: int) -> tuple[int, bool]:
    """A pidfd for the peer, and whether the kernel pinned it to the connecting process.

    With ``SO_PEERPIDFD`` (Linux ≥ 6.5) the kernel hands out a pidfd for the very process
    that connected (its struct pid is held by the socket), immune to pid reuse; if that
    process is gone, _inspect's liveness check refuses. Only where the kernel does not
    know the option (ENOPROTOOPT) is the pid opened by number — not pinned, so the caller
    must check the process's start time against the connection's. Any other error is a
    refusal.
    """
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise AttestationError("peer process is gone", reason=Reason.PROCESS_EXITED) from None
    else:
        if pidfd > 0:
            return pidfd, True
        raise AttestationError("no pidfd for the peer", reason=Reason.ATTESTATION_FAILED)
    try:
        return os.pidfd_open(pid), False
    except OSError:
        raise AttestationError("peer process is gone", reason=Reason.PROCESS_EXITED) from None


def _inspect(
    pid: int, uid: int, gid: int, pidfd: int, hasher: ExecutableHasher, cached_only: bool = False
) -> ProcessInfo:
    try:
        start_time = start_time_of(pid)
        exe_path = os.readlink(f"/proc/{pid}/exe")
        exe_sha256 = hasher.digest(pid, cached_only=cached_only)
    except (OSError, ValueError, IndexError) as exc:
        raise AttestationError(
            f"cannot inspect process {pid}: {type(exc).__name__}", reason=Reason.ATTESTATION_FAILED
        ) from None
    if not _alive(pidfd):
        # The facts above may belong to a process that reused the pid.
        raise AttestationError(
            "peer process exited during attestation", reason=Reason.PROCESS_EXITED
        )
    return ProcessInfo(pid, start_time, uid, gid, exe_path, exe_sha256)
