"""Runtime protection (trustmesh.sdk.guard) in a real service: the SDK runner starts
``guardapp`` as ``orders`` in a child process (an audit hook is process-wide and
permanent: never in the test process), with a declared runtime profile; the test calls
it over mTLS as ``payments`` and reads its event log.

For every rule: in monitor mode the operation goes through and a ``would-deny`` event
is recorded; in enforce mode it is refused (PermissionError in the handler) and a
``deny`` event is recorded; declared, it goes through and nothing is recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

ORDERS = "spiffe://sdk.example/orders"  # registered for this process's binary by conftest
PAYMENTS = "spiffe://sdk.example/payments"
HERE = Path(__file__).resolve().parent


@dataclass
class Service:
    url: str
    events: Path
    process: subprocess.Popen[str]

    def recorded(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [
            e
            for e in events.read_events(self.events)
            if str(e["unmapped"]["trustmesh"]["reason"]).startswith("runtime-")
        ]


def declaration(profile: dict[str, Any]) -> str:
    return (
        "trust_domain: sdk.example\n"
        "services:\n"
        f"  orders: {{run: 'guardapp:app', runtime: {json.dumps(profile)}}}\n"
        "  payments: {external: true}\n"
        "calls:\n"
        "  - {from: payments, to: orders, allow: ['GET /do/*']}\n"
    )


@contextmanager
def running(
    tmp: Path, identity: RunningIdentityServer, profile: dict[str, Any]
) -> Iterator[Service]:
    """``guardapp`` served by ``python -m trustmesh.sdk.runner`` under ``profile``."""
    config = tmp / "trustmesh.yaml"
    config.write_text(declaration(profile))
    log = tmp / "state" / "events" / "orders.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRUSTMESH_", "SPIFFE_"))}
    env |= {
        "TRUSTMESH_CONFIG": str(config),
        "TRUSTMESH_SERVICE": "orders",
        "SPIFFE_ENDPOINT_SOCKET": identity.address,
        "TRUSTMESH_EVENTS": str(log),
        "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "trustmesh.sdk.runner", "guardapp:app"],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if " serving on " not in line:
            process.kill()
            raise AssertionError(f"the service did not start: {line}{process.communicate()[1]}")
        url = line.split(" serving on ")[1].split()[0]
        yield Service(url, log, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@asynccontextmanager
async def caller(identity: RunningIdentityServer, url: str) -> AsyncIterator[ServiceClient]:
    source = X509Source(identity.address, spiffe_id=PAYMENTS)
    await source.start()
    client = ServiceClient(RotatingTLS(source), url, ORDERS)
    try:
        yield client
    finally:
        await client.close()
        await source.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """An undeclared host's port the service may be made to reach."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


#: rule → (operations that break it, the reason recorded, the profile that allows them)
def rules(tmp: Path, port: int) -> dict[str, tuple[list[str], Reason, dict[str, Any]]]:
    return {
        "connect": (
            [f"connect?host=127.0.0.1&port={port}"],
            Reason.RUNTIME_CONNECT_DENIED,
            {"connect": [f"127.0.0.1:{port}"]},
        ),
        "lookup": (
            ["lookup?host=exfil.runtime-guard.invalid"],
            Reason.RUNTIME_CONNECT_DENIED,
            {"connect": ["exfil.runtime-guard.invalid:443"]},
        ),
        "subprocess": (["spawn", "system"], Reason.RUNTIME_SUBPROCESS_DENIED, {"subprocess": True}),
        "writable": (
            [f"write?path={tmp}/outside/file"],
            Reason.RUNTIME_WRITE_DENIED,
            {"writable": [f"{tmp}/outside"]},
        ),
        "deserialize": (
            ["unpickle", "unmarshal"],
            Reason.RUNTIME_DESERIALIZE_DENIED,
            {"deserialize": True},
        ),
        "dynamic_code": (["eval"], Reason.RUNTIME_DYNAMIC_CODE_DENIED, {"dynamic_code": True}),
        "native_libraries": (
            ["dlopen"],
            Reason.RUNTIME_NATIVE_LIBRARY_DENIED,
            {"native_libraries": True},
        ),
    }


async def _do(client: ServiceClient, operation: str) -> dict[str, Any]:
    response = await client.get(f"/do/{operation}")
    assert response.status == 200, (operation, response.status, response.body)
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("mode", ["monitor", "enforce"])
async def test_each_rule_is_recorded_and_blocked_only_when_enforced(
    short_tmp: Path, identity: RunningIdentityServer, listener: socket.socket, mode: str
) -> None:
    (short_tmp / "outside").mkdir()
    table = rules(short_tmp, listener.getsockname()[1])
    with running(short_tmp, identity, {"mode": mode}) as service:
        async with caller(identity, service.url) as client:
            for rule, (operations, reason, _) in table.items():
                for operation in operations:
                    before = len(service.recorded())
                    answer = await _do(client, operation)
                    if mode == "enforce":
                        assert "blocked" in answer, (rule, operation, answer)
                        assert "runtime profile" in answer["blocked"]
                    else:
                        assert "done" in answer, (rule, operation, answer)
                    new = service.recorded()[before:]
                    assert len(new) == 1, (rule, operation, new)
                    event = new[0]["unmapped"]["trustmesh"]
                    assert event["reason"] == reason.value, (rule, operation, event)
                    assert event["decision"] == ("deny" if mode == "enforce" else "would-deny")
                    assert event["attributes"]["mode"] == mode
    # it went through only when monitored: the file is there
    assert (short_tmp / "outside" / "file").exists() == (mode == "monitor")


async def test_what_the_profile_declares_goes_through_unrecorded(
    short_tmp: Path, identity: RunningIdentityServer, listener: socket.socket
) -> None:
    (short_tmp / "outside").mkdir()
    table = rules(short_tmp, listener.getsockname()[1])
    profile: dict[str, Any] = {"mode": "enforce"}
    for _, _, allows in table.values():
        for key, value in allows.items():
            profile[key] = [*profile.get(key, []), *value] if isinstance(value, list) else value
    with running(short_tmp, identity, profile) as service:
        async with caller(identity, service.url) as client:
            answers = {op: await _do(client, op) for ops, _, _ in table.values() for op in ops}
        assert all("done" in a for a in answers.values()), answers
        assert answers["spawn"] == {"done": 7}
        assert answers["eval"] == {"done": 42}
        assert service.recorded() == []
