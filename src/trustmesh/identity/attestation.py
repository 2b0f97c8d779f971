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

import contextlib
import grp
import hashlib
import os
import pwd
import select
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

from trustmesh.errors import AttestationError
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
    exe_sha256: str

    def selectors(self) -> frozenset[str]:
        found = {
            f"unix:uid:{self.uid}",
            f"unix:gid:{self.gid}",
            f"unix:path:{self.exe_path}",
            f"unix:sha256:{self.exe_sha256}",
        }
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


class ExecutableHasher:
    """SHA-256 of executables, cached by (device, inode, size, mtime, ctime) of the file
    actually opened through ``/proc/<pid>/exe``: a replaced file has a new key."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._cache: dict[tuple[int, int, int, int, int], str] = {}
        self._max = max_entries

    def digest(self, pid: int) -> str:
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            h = hashlib.sha256()
            with os.fdopen(os.dup(fd), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = digest
            return digest
        finally:
            os.close(fd)


def _alive(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)


def start_time_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    # comm (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall: starttime


def attest_socket(sock: socket.socket, hasher: ExecutableHasher) -> ProcessInfo:
    """Attest the process at the other end of a connected unix socket."""
    try:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError as exc:
        raise AttestationError(
            f"no peer credentials: {exc}", reason=Reason.ATTESTATION_FAILED
        ) from None
    pidfd = _peer_pidfd(sock, pid)
    try:
        return _inspect(pid, uid, gid, pidfd, hasher)
    finally:
        os.close(pidfd)


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


def _peer_pidfd(sock: socket.socket, pid: int) -> int:
    with contextlib.suppress(OSError):
        # The kernel pins the peer's struct pid at connect(): this pidfd names the very
        # process SO_PEERCRED reported, and cannot be re-pointed by pid reuse. If that
        # process has exited, _inspect's liveness check refuses the facts read by pid.
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        if pidfd > 0:
            return pidfd
    try:
        return os.pidfd_open(pid)
    except OSError:
        raise AttestationError("peer process is gone", reason=Reason.PROCESS_EXITED) from None


def _inspect(pid: int, uid: int, gid: int, pidfd: int, hasher: ExecutableHasher) -> ProcessInfo:
    try:
        start_time = start_time_of(pid)
        exe_path = os.readlink(f"/proc/{pid}/exe")
        exe_sha256 = hasher.digest(pid)
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
