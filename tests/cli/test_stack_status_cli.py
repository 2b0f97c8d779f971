"""`trustmesh status --json` and a second `up` against one running stack, which these tests
share (one `up` for the module: the scheduler keeps a file with a module-wide fixture on
one worker); the tests that stop, kill or restart a stack are in test_stack_cli.py."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirig import stack_pids, stack_status

from trustmesh.cli.supervisor import process_alive
from trustmesh.testing import run_cli as tm

DECLARATION = "trust_domain: cli.example\ndev: true\nidentity: {svid_ttl: 5m}\n"


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[Path, Path]]:
    """One stack for the tests that only look at it (a component they stop, they let go
    on again): its declaration and state."""
    root = Path(tempfile.mkdtemp(prefix="tms", dir="/tmp"))
    config = root / "trustmesh.yaml"
    config.write_text(DECLARATION)
    state = root / "state"
    try:
        up = tm("up", "--config", str(config), "--state", str(state), "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        yield config, state
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


def test_status_of_a_running_stack(running: tuple[Path, Path]) -> None:
    config, stack = running
    code, status = stack_status(config, stack)
    assert code == 0
    assert status["running"] is True
    assert status["workload_api"] == f"unix://{stack}/public/workload.sock"
    identity, discovery, auth = status["components"]  # type: ignore[misc]
    assert discovery["name"] == "discovery"
    assert discovery["healthy"] is True
    assert discovery["url"].startswith("https://127.0.0.1:")
    assert status["stale_instances"] == []
    assert identity["name"] == "identity"
    assert identity["healthy"] is True
    assert identity["spiffe_id"] == "spiffe://cli.example/trustmesh/identity"
    assert identity["cert_expires"]
    assert auth["name"] == "auth"
    assert auth["healthy"] is True
    assert auth["spiffe_id"] == "spiffe://cli.example/trustmesh/auth"
    assert auth["url"].startswith("https://127.0.0.1:")
    # dev mode: browsers reach a public listener, whose URL is the issuer
    assert auth["public_url"].startswith("https://127.0.0.1:")
    assert auth["issuer"] == auth["public_url"] != auth["url"]
    assert auth["cert_expires"]
    pids = stack_pids(stack)
    assert len(pids) == 3  # supervisor, identity and auth
    assert all(process_alive(p, s) for p, s in pids)
    # no audit: in the declaration, so no collector: events go to the local logs only,
    # never into a spool that would fill and stop the components
    assert (stack / "events" / "auth.jsonl").stat().st_size > 0
    assert not (stack / "spool").exists()


def test_status_asks_the_components_not_their_files(running: tuple[Path, Path]) -> None:
    """A component that stops answering is unhealthy, though its files still say where it
    listens and its port still takes connections; once it answers again, it is healthy."""
    config, stack = running
    code, status = stack_status(config, stack)
    assert code == 0
    rows = {c["name"]: c for c in status["components"]}  # type: ignore[union-attr]
    auth = rows["auth"]
    os.kill(auth["pid"], signal.SIGSTOP)
    try:
        code, status = stack_status(config, stack)
    finally:
        os.kill(auth["pid"], signal.SIGCONT)
    assert code == 1
    rows = {c["name"]: c for c in status["components"]}  # type: ignore[union-attr]
    assert rows["auth"]["healthy"] is False
    assert rows["auth"]["url"] == auth["url"]  # where it said it listens, as before
    assert (stack / "auth" / "endpoint.json").exists()
    assert rows["auth"]["cert_expires"] is None  # no answer, no certificate seen
    assert rows["identity"]["healthy"]
    assert rows["discovery"]["healthy"]
    # the identity service's row: its signing CA, which outlives the SVIDs it signs
    signing = dt.datetime.fromisoformat(rows["identity"]["cert_expires"])
    assert signing > dt.datetime.fromisoformat(rows["discovery"]["cert_expires"])
    code, _ = stack_status(config, stack)
    assert code == 0


def test_second_up_is_refused_while_running(running: tuple[Path, Path]) -> None:
    config, stack = running
    again = tm("up", "--config", str(config), "--state", str(stack), "--detach")
    assert again.returncode == 1
    assert "already running" in again.stderr
