"""The whole path a user takes: `trustmesh up`, a join token from the CLI, a workload
process that redeems it and gets its SVID with py-spiffe, `trustmesh svid show`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from secretscan import UsedSecrets, assert_no_secret_recorded

from trustmesh.testing import run_cli as tm

CLIENT = Path(__file__).parents[1] / "identity" / "workload_client.py"


#: Every secret the tests of this module used: no event may carry one (checked after `down`).
USED = UsedSecrets()


@pytest.fixture
def used() -> UsedSecrets:
    return USED


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Path, Path, str]]:
    """One stack for the module: its tests register entries of their own, and stop nothing."""
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config = root / "trustmesh.yaml"
    config.write_text("trust_domain: e2e.example\ndev: true\n")
    state = root / "state"
    try:
        up = tm("up", "--config", str(config), "--state", str(state), "--detach")
        assert up.returncode == 0, up.stderr
        status = json.loads(
            tm("status", "--config", str(config), "--state", str(state), "--json").stdout
        )
        try:
            yield config, state, status["workload_api"]
        finally:
            assert tm("down", "--state", str(state)).returncode == 0
        assert_no_secret_recorded(state, USED, at_least=0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _client(python: object, address: str, token: str | None = None) -> dict[str, object]:
    env = dict(python.env)  # type: ignore[attr-defined]
    env.pop("TRUSTMESH_JOIN_TOKEN", None)
    if token:
        env["TRUSTMESH_JOIN_TOKEN"] = token
    proc = subprocess.run(
        [str(python.path), str(CLIENT), address, "x509"],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_join_token_from_the_cli_gives_a_workload_its_svid(
    stack: tuple[Path, Path, str], short_tmp: Path, python_copy: type, used: UsedSecrets
) -> None:
    config, state, address = stack
    worker = python_copy.make(short_tmp / "bin", "batch-worker")
    # unknown to the identity service: refused
    assert _client(worker, address)["ok"] is False
    created = tm(
        "identity",
        "token",
        "create",
        "--spiffe-id",
        "spiffe://e2e.example/batch",
        "--config",
        str(config),
        "--state",
        str(state),
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    used.add(token)
    result = _client(worker, address, token)
    assert result["ok"] is True, result
    assert result["spiffe_id"] == "spiffe://e2e.example/batch"
    # one use only
    assert _client(worker, address, token)["ok"] is False

    deadline = time.monotonic() + 10
    while True:  # issued SVIDs are recorded within a second
        shown = tm("svid", "show", "spiffe://e2e.example/batch", "--state", str(state), "--json")
        if shown.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["uri_sans"] == ["spiffe://e2e.example/batch"]
    assert facts["expired"] is False
    assert facts["chain_length"] == 2


def test_entry_registered_while_running_takes_effect(
    stack: tuple[Path, Path, str], short_tmp: Path, python_copy: type
) -> None:
    config, state, address = stack
    worker = python_copy.make(short_tmp / "bin", "registered-worker")
    assert _client(worker, address)["ok"] is False
    reg = tm(
        "identity",
        "register",
        "--spiffe-id",
        "spiffe://e2e.example/reports",
        "--selector",
        f"unix:uid:{os.getuid()}",
        "--selector",
        f"unix:path:{worker.path}",
        "--config",
        str(config),
        "--state",
        str(state),
    )
    assert reg.returncode == 0, reg.stderr
    deadline = time.monotonic() + 10
    while True:
        result = _client(worker, address)
        if result["ok"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result["spiffe_id"] == "spiffe://e2e.example/reports"
