"""Every process of the identity service delivers what it records to the audit
collector: the SVIDs its workers issue are in the audit log, not only in the local
event log (each worker spools under its slot, which its replacement takes over)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustmesh.testing import run_cli as tm

TD = "workers-audit.example"
API = f"spiffe://{TD}/api"


@pytest.fixture
def stack() -> Iterator[tuple[Path, Path]]:
    root = Path(tempfile.mkdtemp(prefix="tmw", dir="/tmp"))  # a short unix socket path
    config = root / "trustmesh.yaml"
    config.write_text(f"trust_domain: {TD}\ndev: true\nidentity: {{workers: 3}}\naudit: {{}}\n")
    state = root / "s"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield config, state
    finally:
        tm("down", "--state", str(state))


def _issued_in_the_audit_log(config: Path, state: Path) -> int:
    found = tm(
        "audit",
        "events",
        "--config",
        str(config),
        "--state",
        str(state),
        "--reason",
        "svid-issued",
        "--principal",
        API,
        "--limit",
        "1000",
        "--json",
    )
    assert found.returncode == 0, found.stderr
    return len([line for line in found.stdout.splitlines() if line.strip()])


def _issued_in_the_log(state: Path) -> int:
    lines = (state / "events" / "identity.jsonl").read_text().splitlines()
    return sum(1 for line in lines if "X.509-SVID issued" in line and API in line)


def _pid(state: Path, component: str) -> int:
    return int(json.loads((state / "run" / f"{component}.json").read_text())["pid"])


def test_the_workers_svids_reach_the_audit_log(stack: tuple[Path, Path]) -> None:
    from spiffe import WorkloadApiClient

    config, state = stack
    registered = tm(
        "identity",
        "register",
        "--config",
        str(config),
        "--state",
        str(state),
        "--spiffe-id",
        API,
        "--selector",
        f"unix:uid:{os.getuid()}",
        "--selector",
        f"unix:path:{os.readlink('/proc/self/exe')}",
    )
    assert registered.returncode == 0, registered.stderr
    identity = _pid(state, "identity")
    collector = _pid(state, "audit")
    workers = Path(f"/proc/{identity}/task/{identity}/children").read_text().split()
    assert len(workers) == 2
    address = f"unix://{state}/public/workload.sock"
    # the collector paused (the workers spool what they record) and the leader too (only
    # the workers accept); then a worker killed outright, its spool left behind
    os.kill(collector, signal.SIGSTOP)
    os.kill(identity, signal.SIGSTOP)
    try:
        for _ in range(12):  # separate connections: the kernel spreads them over the two
            with WorkloadApiClient(address) as client:
                assert str(client.fetch_x509_svid().spiffe_id) == API
        os.kill(int(workers[0]), signal.SIGKILL)
    finally:
        os.kill(identity, signal.SIGCONT)
        os.kill(collector, signal.SIGCONT)
    logged = _issued_in_the_log(state)
    assert logged >= 12
    # the replacement worker delivers what the killed one spooled
    deadline = time.monotonic() + 30
    while (audited := _issued_in_the_audit_log(config, state)) < logged:
        assert time.monotonic() < deadline, (audited, logged)
        time.sleep(0.5)
    assert audited == logged
