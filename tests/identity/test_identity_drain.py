"""The identity service stopped (SIGTERM): a drain, as every other component's. The
Workload API takes no new connection, a call in flight is answered, every stream ends
with UNAVAILABLE (the workload keeps its SVID and asks the next instance, py-spiffe's
watcher says so through its error callback), and a call still running at the deadline is
cut and recorded. Driven by py-spiffe, the client a workload uses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from spiffe import WorkloadApiClient
from spiffe.workloadapi.errors import FetchJwtSvidError

from trustmesh.config import parse_config
from trustmesh.events import read_events
from trustmesh.sdk import drain
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread, until

TD = "shop.example"


def _selectors() -> list[str]:
    exe = os.readlink("/proc/self/exe")
    return [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"]


@pytest.fixture
def server(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningIdentityServer]:
    monkeypatch.setattr(drain, "_drain", drain._Drain())  # this test's drain, not the process's
    drain.configure(1.5)
    config = parse_config(f"trust_domain: {TD}\ndev: true\n", source="test.yaml")
    with identity_server_in_thread(config, short_tmp / "state") as running:
        running.call(running.server.service.register, f"spiffe://{TD}/orders", _selectors(), None)
        yield running


def _slowed(run: RunningIdentityServer, seconds: float) -> threading.Event:
    """Every answer from now on waits ``seconds`` before it is sent (as a slow audit
    spool would hold it); the event is set when one is waiting."""
    waiting = threading.Event()

    async def recorded() -> bool:
        waiting.set()
        await asyncio.sleep(seconds)
        return True

    run.server.api.recorded = recorded
    return waiting


def _drain(run: RunningIdentityServer) -> concurrent.futures.Future[int]:
    return asyncio.run_coroutine_threadsafe(run.server.drain(), run.loop)


def _reasons(run: RunningIdentityServer) -> list[str]:
    return [str(e["status_detail"]) for e in read_events(run.server.paths.events)]


def test_a_drain_answers_the_call_in_flight_and_ends_every_stream(
    server: RunningIdentityServer,
) -> None:
    streamed: list[object] = []
    ended: list[Exception] = []
    watcher = WorkloadApiClient(server.address)
    cancel = watcher.stream_x509_contexts(streamed.append, ended.append, retry_connect=False)
    until(lambda: streamed, "the stream's first X.509 context")
    waiting = _slowed(server, 0.5)
    client = WorkloadApiClient(server.address)
    answered = concurrent.futures.ThreadPoolExecutor(1).submit(client.fetch_jwt_svid, {"payments"})
    assert waiting.wait(10)
    started = time.monotonic()
    drained = _drain(server)
    jwt = answered.result(timeout=10)  # the call in flight is answered
    assert drained.result(timeout=10) == 0  # nothing was left to cut
    assert time.monotonic() - started < 1.5  # done before the deadline: not waited out
    assert str(jwt.spiffe_id) == f"spiffe://{TD}/orders"
    assert jwt.audience == {"payments"}
    # the stream ended, with UNAVAILABLE: py-spiffe's watcher reports it
    until(lambda: ended, "the stream's end")
    assert "UNAVAILABLE" in repr(ended[0]) or "shutting down" in str(ended[0])
    cancel.cancel()
    watcher.close()
    # no new connection is taken, nor a new call on a connection still open
    probe = socket.socket(socket.AF_UNIX)
    with pytest.raises(ConnectionRefusedError):
        probe.connect(str(server.server.paths.socket))
    probe.close()
    with pytest.raises(FetchJwtSvidError):
        client.fetch_jwt_svid({"payments"}, timeout=2)
    client.close()
    assert "shutting-down" not in _reasons(server)


def test_a_call_still_running_at_the_deadline_is_cut_and_recorded(
    server: RunningIdentityServer,
) -> None:
    waiting = _slowed(server, 30)
    client = WorkloadApiClient(server.address)
    answered = concurrent.futures.ThreadPoolExecutor(1).submit(client.fetch_jwt_svid, {"payments"})
    assert waiting.wait(10)
    started = time.monotonic()
    assert _drain(server).result(timeout=10) == 1
    assert 1.4 <= time.monotonic() - started < 5  # the deadline (whole seconds: 2), not 30 s
    assert "shutting-down" in _reasons(server)
    assert not answered.done()
    server.call(server.server._server.close)  # what the stop does next: the call is cut
    with pytest.raises(FetchJwtSvidError):  # never a JWT whose issuance is not recorded
        answered.result(timeout=10)
    client.close()
