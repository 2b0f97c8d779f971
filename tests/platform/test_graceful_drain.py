"""SIGTERM drains a component (:mod:`trustmesh.sdk.drain`), on a stack the supervisor of
``trustmesh up`` runs as real processes: every listener stops accepting connections at
once, a request in flight finishes (``200``), one still running at the deadline
(``listen.drain``) is cut with a ``503`` and recorded as cut (``shutting-down``), the events of the requests just before the
signal and during the drain reach the collector, and the process exits 0 (the supervisor
then starts it again)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from slowapp import write_slow_app

from trustmesh.cli import _admin
from trustmesh.cli.supervisor import RunPaths, read_json, recorded_process, stop_stack
from trustmesh.identity.endpoint import IdentityPaths
from trustmesh.platform.endpoints import instance
from trustmesh.reasons import Reason
from trustmesh.testing import until

pytestmark = pytest.mark.xdist_group("graceful-drain")

DRAIN = 3  # seconds: listen.drain
CONFIG = f"""trust_domain: drain.example
dev: true
listen: {{drain: {DRAIN}s}}
services:
  slow: {{run: "graceslow:app"}}
gateway:
  routes:
    - {{path: /slow, to: slow, methods: [GET], auth: [anonymous]}}
secrets: {{}}
audit: {{}}
"""


@dataclass(frozen=True)
class Stack:
    state: Path

    def pid(self, name: str) -> int | None:
        found = recorded_process(RunPaths(self.state).component(name))
        return found[0] if found else None

    def gateway_url(self) -> str:
        return str((read_json(self.state / "gateway" / "endpoint.json") or {})["url"])

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(
            self.gateway_url() + path, verify=str(self.state / "edge" / "ca.pem"), timeout=timeout
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The supervisor of ``trustmesh up`` (its detached form), with a slow service."""
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    write_slow_app(root / "graceslow.py", "/slow/slow/")  # /slow/slow/<seconds>
    (root / "trustmesh.yaml").write_text(CONFIG)
    state = root / "state"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    argv = [sys.executable, "-m", "trustmesh", "_supervise"]
    argv += ["--config", str(root / "trustmesh.yaml"), "--state", str(state)]
    RunPaths(state).logs.mkdir(parents=True, mode=0o700)
    with RunPaths(state).log("supervisor").open("ab") as log:  # where `up --detach` logs
        supervisor = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        phase = lambda: (read_json(RunPaths(state).supervisor) or {}).get("phase")  # noqa: E731
        until(
            lambda: phase() in ("ready", "failed") or supervisor.poll() is not None, "up", within=60
        )
        assert phase() == "ready", (root / "state" / "logs").glob("*.log")
        yield Stack(state)
    finally:
        supervisor.terminate()  # as `down` does; waited for here, where it is a child
        supervisor.wait(60)
        stop_stack(state, print)  # anything it left
        shutil.rmtree(root, ignore_errors=True)


def _serving(stack: Stack) -> None:
    """Every component serves again (the supervisor restarted the one a test stopped)."""

    def answered() -> bool:
        try:
            return stack.get("/slow/ready", timeout=5).status_code == 200
        except (requests.RequestException, KeyError, TypeError):
            return False

    until(answered, "the gateway and the service answer", within=20)


def _refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _exited_cleanly(stack: Stack, name: str, pid: int) -> None:
    """The process is gone, and the supervisor saw it exit 0."""
    until(lambda: not Path(f"/proc/{pid}").exists(), f"{name} exits", within=DRAIN + 15)
    log = RunPaths(stack.state).log("supervisor")
    line = f"{name} exited with code 0"
    until(lambda: line in log.read_text(), line, within=5)
    assert f"{name} exited with code 1" not in log.read_text()


def _traces(responses: list[requests.Response]) -> list[str]:
    return [r.headers["traceresponse"].split("-")[1] for r in responses]


def _recorded(stack: Stack, trace_id: str, reporter: str) -> list[dict[str, object]]:
    """The collector's events of ``trace_id`` that ``reporter`` recorded."""
    found = _admin.call(stack.state, "audit", "GET", f"/v1/events?trace_id={trace_id}")
    mine = [e["unmapped"]["trustmesh"] for e in found["events"]]
    return [e for e in mine if str(e["reporter"]).endswith("/" + reporter)]


def _cut(stack: Stack, reporter: str, trace_id: str | None = None) -> list[dict[str, object]]:
    """What the collector holds of the requests ``reporter`` cut at its drain deadline
    (of one trace, with ``trace_id``)."""
    query = f"reason={Reason.SHUTTING_DOWN}" + (f"&trace_id={trace_id}" if trace_id else "")
    found = _admin.call(stack.state, "audit", "GET", f"/v1/events?{query}")
    mine = [e["unmapped"]["trustmesh"] for e in found["events"]]
    return [e["attributes"] for e in mine if str(e["reporter"]).endswith("/" + reporter)]


Timed = tuple[requests.Response, float]  # an answer, and when it came


def _in_flight(pool: ThreadPoolExecutor, stack: Stack, *paths: str) -> list[Future[Timed]]:
    def timed(path: str) -> Timed:
        response = stack.get(path)
        return response, time.monotonic()

    return [pool.submit(timed, path) for path in paths]


def _stops_at_once(stack: Stack, name: str) -> None:
    """With nothing in flight, SIGTERM: every listener of ``name`` (mTLS, public, metrics,
    console) refuses new connections at once, and it exits 0."""
    _serving(stack)
    pid = stack.pid(name)
    assert pid is not None
    endpoint = read_json(stack.state / name / "endpoint.json") or {}
    urls = [str(v) for k, v in endpoint.items() if k.endswith("url") and v]
    assert urls
    os.kill(pid, signal.SIGTERM)
    until(lambda: all(map(_refused, urls)), f"every listener of {name} refuses", within=2.0)
    _exited_cleanly(stack, name, pid)


@pytest.mark.parametrize("name", ["secrets", "auth"])
def test_sigterm_stops_a_component_at_once_when_nothing_is_in_flight(
    stack: Stack, name: str
) -> None:
    _stops_at_once(stack, name)


def test_sigterm_drains_the_gateway_and_flushes_its_events(stack: Stack) -> None:
    _serving(stack)
    pid, url = stack.pid("gateway"), stack.gateway_url()
    assert pid is not None
    with ThreadPoolExecutor(8) as pool:
        just_before = list(pool.map(lambda _: stack.get("/slow/burst"), range(6)))
        finishing, cut = _in_flight(pool, stack, "/slow/slow/1.5", "/slow/slow/30")
        time.sleep(0.5)  # both are in flight
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        until(lambda: _refused(url), "new connections refused at once", within=2.0)
        assert not finishing.done()  # refused while a request is still being served
        (answer, _), (refused, at) = finishing.result(), cut.result()
    assert answer.status_code == 200
    assert answer.text == "/slow/slow/1.5"
    assert refused.status_code == 503
    assert refused.json()["error"] == "unavailable"
    assert refused.headers["connection"] == "close"
    assert DRAIN - 0.5 < at - signalled < DRAIN + 2  # cut at the deadline, not before
    _exited_cleanly(stack, "gateway", pid)
    for trace_id in _traces([*just_before, answer]):  # delivered before it exited
        statuses = [e["attributes"]["status"] for e in _recorded(stack, trace_id, "gateway")]  # type: ignore[index]
        assert statuses == [200], trace_id
    assert _cut(stack, "gateway") == [{"method": "GET", "path": "/slow/slow/30", "answer": "503"}]


def test_sigterm_drains_a_service_run_by_the_sdk(stack: Stack) -> None:
    _serving(stack)
    pid = stack.pid("slow")
    assert pid is not None
    discovery = read_json(IdentityPaths(stack.state).discovery) or {}
    service_url = str((instance(discovery, "slow") or {})["url"])
    with ThreadPoolExecutor(4) as pool:
        finishing, cut = _in_flight(pool, stack, "/slow/slow/1.5", "/slow/slow/30")
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        until(lambda: _refused(service_url), "the service refuses new connections", within=2.0)
        assert not finishing.done()
        (answer, _), (refused, _) = finishing.result(), cut.result()
    assert answer.status_code == 200  # it could still call out, had it needed to
    assert refused.status_code == 503  # the gateway's answer to the service's cut
    _exited_cleanly(stack, "slow", pid)
    (trace_id,) = _traces([answer])
    assert [e["decision"] for e in _recorded(stack, trace_id, "slow")] == ["allow"]
    # the request the gateway passed on, cut by the service (named by the trace it carried)
    (cut_trace,) = _traces([refused])
    assert _cut(stack, "slow", cut_trace) == [
        {"method": "GET", "path": "/slow/slow/30", "answer": "503"}
    ]


def test_sigterm_stops_the_collector_at_once_when_nothing_is_in_flight(stack: Stack) -> None:
    _stops_at_once(stack, "audit")  # last: the tests before ask it for their events
