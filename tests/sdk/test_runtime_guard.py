"""Runtime protection (trustmesh.sdk.guard) in a real service: the SDK runner starts
``guardapp`` as ``orders`` in a child process (an audit hook is process-wide and
permanent: never in the test process), with a declared runtime profile; the test calls
it over mTLS as ``payments`` and reads its event log.

For every rule: in monitor mode the operation goes through and a ``would-deny`` event
is recorded; in enforce mode it is refused (PermissionError in the handler) and a
``deny`` event is recorded; declared, it goes through and nothing is recorded."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trustmesh import events
from trustmesh.audit.detection import Alert
from trustmesh.audit.server import serve_audit
from trustmesh.config import parse_config
from trustmesh.reasons import Reason
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

ORDERS = "spiffe://sdk.example/orders"  # registered for this process's binary by conftest
PAYMENTS = "spiffe://sdk.example/payments"
AUDIT = "spiffe://sdk.example/trustmesh/audit"
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


def declaration(profile: dict[str, Any], extra: str = "") -> str:
    return (
        "trust_domain: sdk.example\n"
        f"{extra}"
        "services:\n"
        f"  orders: {{run: 'guardapp:app', runtime: {json.dumps(profile)}}}\n"
        "  payments: {external: true}\n"
        "calls:\n"
        "  - {from: payments, to: orders, allow: ['GET /do/*']}\n"
    )


@contextmanager
def running(
    tmp: Path,
    identity: RunningIdentityServer,
    profile: dict[str, Any],
    *,
    extra: str = "",
    audit_url: str | None = None,
) -> Iterator[Service]:
    """``guardapp`` served by ``python -m trustmesh.sdk.runner`` under ``profile``
    (delivering its events to the collector at ``audit_url``, when given)."""
    config = tmp / "trustmesh.yaml"
    config.write_text(declaration(profile, extra))
    log = tmp / "state" / "events" / "orders.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRUSTMESH_", "SPIFFE_"))}
    env |= {
        "TRUSTMESH_CONFIG": str(config),
        "TRUSTMESH_SERVICE": "orders",
        "SPIFFE_ENDPOINT_SOCKET": identity.address,
        "TRUSTMESH_EVENTS": str(log),
        "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
    }
    if audit_url is not None:
        env["TRUSTMESH_AUDIT_URL"] = audit_url
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


async def test_a_shell_spawned_in_an_enforced_service_is_stopped_and_alerted(
    short_tmp: Path, identity: RunningIdentityServer
) -> None:
    """The whole path: the handler is made to spawn a shell, the guard refuses it, the
    service delivers the event to the audit collector, and the shipped rule alerts on it
    naming the service."""
    selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]
    identity.call(identity.server.service.register, AUDIT, selectors, None)
    config = parse_config(declaration({}, "dev: true\naudit: {}\n"), source="t.yaml")
    alerts: list[Alert] = []

    async def on_alerts(raised: list[Alert]) -> None:
        alerts.extend(raised)

    source = X509Source(identity.address, spiffe_id=AUDIT)
    await source.start()
    state = short_tmp / "state"
    collector = await serve_audit(
        config, state, source=source, sink=events.MemorySink(), on_alerts=on_alerts
    )
    try:
        extra = "dev: true\naudit: {}\n"
        with running(
            short_tmp, identity, {"mode": "enforce"}, extra=extra, audit_url=collector.url
        ) as service:
            async with caller(identity, service.url) as client:
                assert "blocked" in await _do(client, "spawn")
            deadline = time.monotonic() + 15
            while not alerts and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
    finally:
        await collector.stop()
        await source.close()
    (alert,) = alerts
    assert alert.title == "Runtime profile violated in a service"
    assert dict(alert.group) == {
        "unmapped.trustmesh.spiffe_id": ORDERS,
        "unmapped.trustmesh.reason": Reason.RUNTIME_SUBPROCESS_DENIED.value,
    }
