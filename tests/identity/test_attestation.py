"""Attestation's cached fast path: the Workload API attests inline on its event loop only
when nothing has to be read but a few /proc entries; an executable it has not hashed
yet (a new file, or the same path replaced) is hashed in a thread first."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustmesh.identity.attestation import ExecutableHasher, NotHashedYet, attest_socket


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    exe = tmp_path / "sleeper"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "30"])
    try:
        yield proc, exe
    finally:
        proc.kill()
        proc.wait()


def test_cached_only_refuses_to_read_an_unhashed_executable(
    sleeper: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, exe = sleeper
    hasher = ExecutableHasher()
    with pytest.raises(NotHashedYet):
        hasher.digest(proc.pid, cached_only=True)
    expected = hashlib.sha256(exe.read_bytes()).hexdigest()
    assert hasher.digest(proc.pid) == expected
    assert hasher.digest(proc.pid, cached_only=True) == expected


def test_a_replaced_executable_is_not_served_from_the_cache(
    sleeper: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, exe = sleeper
    hasher = ExecutableHasher()
    hasher.digest(proc.pid)
    # the same path now names another file (a new inode: same bytes, or not, alike)
    exe.unlink()
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", exe)
    other = subprocess.Popen([str(exe), "30"])
    try:
        with pytest.raises(NotHashedYet):
            hasher.digest(other.pid, cached_only=True)
        assert hasher.digest(other.pid) == hashlib.sha256(exe.read_bytes()).hexdigest()
    finally:
        other.kill()
        other.wait()


def test_attest_socket_fast_path_matches_the_full_attestation() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hasher = ExecutableHasher()
        with pytest.raises(NotHashedYet):
            attest_socket(ours, hasher, cached_only=True)
        full = attest_socket(ours, hasher)
        fast = attest_socket(ours, hasher, cached_only=True)
        assert fast == full
        assert full.pid == os.getpid()
        assert full.exe_sha256 == hashlib.sha256(Path("/proc/self/exe").read_bytes()).hexdigest()
    finally:
        ours.close()
        theirs.close()
