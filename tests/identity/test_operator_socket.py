"""The operator's way in (``<state>/private/operator.sock``): the state directory's owner
gets a one-time join token for the operator and nothing else; anyone else cannot reach
the socket, and a peer of another uid that does is refused, with an event."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustmesh.config import parse_config
from trustmesh.errors import PermissionDeniedError
from trustmesh.events import read_events
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.sdk.workload import redeem_join_token
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "op.example"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"
CONFIG = parse_config(f"trust_domain: {TD}\ndev: true\n", source="test.yaml")


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    with identity_server_in_thread(CONFIG, short_tmp / "state", discovery=True) as running:
        yield running


def _ask(path: Path) -> dict[str, str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        answer = s.makefile("rb").read()
    doc = json.loads(answer)
    assert isinstance(doc, dict)
    return doc


def _events(identity: RunningIdentityServer) -> list[dict[str, object]]:
    return list(read_events(identity.server.paths.events))


async def test_the_owner_gets_one_operator_token(identity: RunningIdentityServer) -> None:
    paths = IdentityPaths(identity.server.paths.root)
    assert stat.S_IMODE(paths.operator_socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.operator_socket.stat().st_mode) == 0o600
    doc = _ask(paths.operator_socket)
    assert set(doc) == {"token", "spiffe_id", "expires_at"}
    assert doc["spiffe_id"] == OPERATOR
    left = dt.datetime.fromisoformat(doc["expires_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(0) < left <= dt.timedelta(minutes=1)
    assert _ask(paths.operator_socket)["token"] != doc["token"]  # one per connection
    assert await redeem_join_token(paths.socket_address, doc["token"]) == OPERATOR
    with pytest.raises(PermissionDeniedError):  # one use
        await redeem_join_token(paths.socket_address, doc["token"])
    source = X509Source(paths.socket_address, spiffe_id=OPERATOR)
    try:
        assert (await source.start()).spiffe_id == OPERATOR
    finally:
        await source.close()
    made = [e for e in _events(identity) if e["status_detail"] == "token-created"]
    assert [e["unmapped"]["trustmesh"]["spiffe_id"] for e in made] == [OPERATOR, OPERATOR]
    assert all(e["unmapped"]["trustmesh"]["attributes"]["by"] == "operator" for e in made)
    for path in paths.root.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert doc["token"].encode() not in path.read_bytes(), path


def _as_nobody(path: Path) -> str:
    """What a process of another user sees at the socket: its answer, or the error's name
    (a forked child that drops to ``nobody`` and only makes system calls)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(path))
                os.write(write, s.makefile("rb").read())
        except OSError as exc:
            os.write(write, type(exc).__name__.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        seen = answer.read().decode()
    os.waitpid(pid, 0)
    return seen.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another user")
def test_another_user_is_kept_out_and_refused(
    identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """The directory's mode keeps another user out; were it opened up, the kernel's word
    on the peer (its uid) would still refuse it."""
    paths = IdentityPaths(identity.server.paths.root)
    short_tmp.chmod(0o711)  # others may pass through, as to any state directory
    assert _as_nobody(paths.operator_socket) == "PermissionError"
    paths.operator_socket.parent.chmod(0o711)
    paths.operator_socket.chmod(0o666)
    answer = json.loads(_as_nobody(paths.operator_socket))
    assert answer == {"error": "forbidden", "message": "not the state directory's owner"}
    denied = [e for e in _events(identity) if e["status_detail"] == "admin-denied"]
    assert len(denied) == 1
    assert "uid 65534" in str(denied[0]["message"])
    assert not [e for e in _events(identity) if e["status_detail"] == "token-created"]
