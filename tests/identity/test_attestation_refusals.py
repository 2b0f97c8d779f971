"""Attestation refuses a process it cannot vouch for: the Workload API attests the
process that *connected*, so a socket handed on by a process that has since exited gets
no identity, even when its holder would match the entry; attesting a process that is
gone is refused as such. Each refusal is asserted with its reason."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from trustmesh.config import parse_config
from trustmesh.events import read_events
from trustmesh.identity.attestation import AttestationError, ExecutableHasher, attest_pid
from trustmesh.identity.workload import SECURITY_HEADER
from trustmesh.reasons import Reason
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "attest.example"

#: Connects to the socket at argv[1], hands the connected socket to its parent over the
#: unix socket whose descriptor is argv[2], and exits.
CONNECT_AND_HAND_ON = """
import socket, sys
workload = socket.socket(socket.AF_UNIX)
workload.connect(sys.argv[1])
parent = socket.socket(fileno=int(sys.argv[2]))
socket.send_fds(parent, [b"s"], [workload.fileno()])
"""


@pytest.fixture
def server(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    config = parse_config(f"trust_domain: {TD}\ndev: true\n", source="test.yaml")
    with identity_server_in_thread(config, short_tmp / "state") as running:
        exe = os.readlink("/proc/self/exe")  # the child runs this interpreter too
        running.call(
            running.server.service.register,
            f"spiffe://{TD}/orders",
            [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
            None,
        )
        yield running


def _state(pid: int) -> str:
    """The process state letter of ``pid`` (``Z``: exited, not yet reaped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _handed_on(path: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A socket connected to ``path`` by a child process that has exited since (a zombie:
    not reaped, so its pid cannot be reused meanwhile), and that child."""
    ours, theirs = socket.socketpair()
    with ours:
        child = subprocess.Popen(
            [sys.executable, "-c", CONNECT_AND_HAND_ON, path, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    deadline = time.monotonic() + 10
    while _state(child.pid) != "Z":  # exited; reaped only by child.wait()
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return socket.socket(fileno=fds[0]), child


def _grpc_status(sock: socket.socket, method: str) -> str:
    """Call ``method`` with an empty request over ``sock`` (HTTP/2, as gRPC does); the
    grpc-status of the answer."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            (SECURITY_HEADER, "true"),
        ],
    )
    conn.send_data(stream, b"\0\0\0\0\0", end_stream=True)  # one empty message
    sock.sendall(conn.data_to_send())
    sock.settimeout(10)
    headers: dict[str, str] = {}
    while "grpc-status" not in headers:
        data = sock.recv(65536)
        assert data, f"connection closed without a grpc-status: {headers}"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                headers.update((str(k), str(v)) for k, v in event.headers)
        sock.sendall(conn.data_to_send())
    return headers["grpc-status"]


def test_a_socket_whose_connecting_process_exited_gets_no_identity(
    server: RunningIdentityServer,
) -> None:
    path = server.server.paths.socket.absolute()
    sock, child = _handed_on(str(path))
    try:
        with sock:
            status = _grpc_status(sock, "/SpiffeWorkloadAPI/FetchX509SVID")
    finally:
        child.wait()
    assert status == "7"  # PERMISSION_DENIED, though this process matches the entry
    refused = [
        e
        for e in read_events(server.server.paths.events)
        if e["status_detail"] == Reason.ATTESTATION_FAILED
    ]
    assert len(refused) == 1
    assert refused[0]["unmapped"]["trustmesh"]["decision"] == "deny"
    assert f"cannot inspect process {child.pid}" in refused[0]["message"]


def test_attesting_a_process_that_is_gone_is_refused_as_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid names no process
    with pytest.raises(AttestationError) as refused:
        attest_pid(child.pid, os.getuid(), os.getgid(), ExecutableHasher())
    assert refused.value.reason is Reason.PROCESS_EXITED
