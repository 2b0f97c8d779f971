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


def _issued(lines: list[str]) -> set[str]:
    """The uids of the events that say an API SVID was issued to this test's process (the
    stack's own processes run this interpreter too, so the entry matches them: they are
    issued API SVIDs as well, and so is each `audit events` command)."""
    found = set()
    for line in lines:
        event = json.loads(line)
        trustmesh = event["unmapped"]["trustmesh"]
        if (
            trustmesh.get("reason") == "svid-issued"
            and trustmesh.get("spiffe_id") == API
            and trustmesh["attributes"]["pid"] == os.getpid()
        ):
            found.add(event["metadata"]["uid"])
    return found


def _issued_in_the_audit_log(config: Path, state: Path) -> set[str]:
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
    return _issued([line for line in found.stdout.splitlines() if line.strip()])


def _issued_in_the_log(state: Path) -> set[str]:
    return _issued((state / "events" / "identity.jsonl").read_text().splitlines())


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
    assert len(logged) == 12
    # the replacement worker delivers what the killed one spooled: every one of them
    deadline = time.monotonic() + 30
    while (audited := _issued_in_the_audit_log(config, state)) != logged:
        assert time.monotonic() < deadline, f"not in the audit log: {sorted(logged - audited)}"
        time.sleep(0.5)
