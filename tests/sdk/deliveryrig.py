"""Delivery to a real audit collector: the collector in this process (tests/audit's rig)
or in its own (``python -m trustmesh.audit``, to be killed with SIGKILL and restarted on
the same port), a producer's AuditSink with a fast back-off, and the operator's view of
what was stored."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "audit"))

from collectorrig import (
    AUDIT,
    CONFIG,
    OPERATOR,
    PAYMENTS,
    TD,
    Caller,
    CollectorRig,
    collector_config,
    collector_rig,
    identity_for,
)

from trustmesh import events
from trustmesh.reasons import Reason
from trustmesh.sdk.collector import Backoff, CollectorClient
from trustmesh.sdk.delivery import AuditSink, OnFull
from trustmesh.sdk.spool import Spool
from trustmesh.sdk.x509source import SVIDSource
from trustmesh.testing.process import stop_process

__all__ = [
    "AUDIT",
    "CONFIG",
    "OPERATOR",
    "PAYMENTS",
    "TD",
    "Caller",
    "CollectorRig",
    "collector_config",
    "collector_rig",
    "identity_for",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def producer(
    source: SVIDSource,
    spool_dir: Path,
    port: int,
    *,
    max_bytes: int = 1 << 24,
    on_full: OnFull = "block",
    max_queue: int = 10_000,
    batch: int = 500,
) -> AuditSink:
    client = CollectorClient(f"https://127.0.0.1:{port}", source, AUDIT, timeout=5.0)
    return AuditSink(
        Spool(spool_dir, max_bytes),
        client,
        component="payments",
        on_full=on_full,
        batch=batch,
        max_queue=max_queue,
        spiffe_id=PAYMENTS,
        backoff=Backoff(initial=0.02, maximum=0.25),
    )


def emit_numbered(sink: AuditSink, start: int, count: int) -> None:
    """Events shaped as the middleware records a call, numbered in ``attributes.n``."""
    recorder = events.Recorder(sink, component="payments", spiffe_id=PAYMENTS)
    for n in range(start, start + count):
        recorder.record(Reason.POLICY_ALLOW, "call allowed", attributes={"n": n})


async def stored(operator: Caller) -> list[dict[str, Any]]:
    """Every event the collector stored, in its order (seq)."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await operator.call("GET", f"/v1/events?after={after}&limit=1000")
        assert status == 200, page
        if not page["events"]:
            return found
        found += page["events"]
        after = page["events"][-1]["seq"]


def numbers(found: list[dict[str, Any]]) -> list[int]:
    return [
        e["unmapped"]["trustmesh"]["attributes"]["n"]
        for e in found
        if e["actor"]["app_name"] == "payments"
        and "n" in e["unmapped"]["trustmesh"].get("attributes", {})
    ]


class CollectorProcess:
    """``python -m trustmesh.audit`` on a fixed port, as ``trustmesh up`` runs it."""

    def __init__(self, folder: Path, identity_address: str, port: int) -> None:
        self.folder = folder
        self.state = folder / "state"
        self.config_file = folder / "trustmesh.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f"trust_domain: {TD}\ndev: true\nservices:\n  payments: {{external: true}}\n"
            f"audit: {{port: {port}, checkpoint_every: 1000}}\n"
        )
        self.env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": identity_address}
        self.env.pop("TRUSTMESH_AUDIT_URL", None)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        endpoint = self.state / "audit" / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "trustmesh.audit", "--config", str(self.config_file)]
        self.proc = subprocess.Popen([*argv, "--state", str(self.state)], env=self.env)
        deadline = time.monotonic() + 30
        while not endpoint.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the collector did not start")
            await asyncio.sleep(0.05)
        assert json.loads(endpoint.read_text())["url"] == f"https://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, whatever it was doing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
