"""`trustmesh up --detach` / `status --json` / `down`, driven as a user or a script would,
as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from clirig import stack_pids, stack_status

from trustmesh.cli.launcher import SPAWN_ENV
from trustmesh.cli.supervisor import process_alive
from trustmesh.testing import run_cli as tm


@pytest.fixture
def config(short_tmp: Path) -> Path:
    path = short_tmp / "trustmesh.yaml"
    path.write_text("trust_domain: cli.example\ndev: true\nidentity: {svid_ttl: 5m}\n")
    return path


@pytest.fixture
def stack(short_tmp: Path, config: Path) -> Iterator[Path]:
    """A stack of this test's own: it stops, kills or restarts it (the tests that only look
    at a running stack share one, in test_stack_status_cli.py)."""
    state = short_tmp / "state"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield state
    finally:
        tm("down", "--state", str(state))


def test_down_restart_crash_and_another_trust_domain(
    stack: Path, config: Path, short_tmp: Path
) -> None:
    """One stack through its life (each step was a test with a stack of its own): `down`
    leaves no process; `up` again reuses the trust domain; a crashed supervisor leaves
    nothing behind and a new `up` starts cleanly; another trust domain on the same state
    fails clearly."""

    def roots() -> list[str]:
        import sqlite3

        db = sqlite3.connect(stack / "identity.db")
        try:
            return [json.loads(r[0])["root"] for r in db.execute("SELECT doc FROM ca_generations")]
        finally:
            db.close()

    # the platform's components forked from the supervisor, each as if exec'd (but the
    # first, exec'd while the supervisor imports the others)
    assert _component_processes(stack) == {
        name: (comm, "/dev/null", str(stack / "logs" / f"{name}.log"), [])
        for name, comm in (("identity", "python"), ("auth", "tm-auth"))
    }

    # down leaves no process
    pids = stack_pids(stack)
    assert pids
    assert all(process_alive(p, s) for p, s in pids)
    before = roots()
    down = tm("down", "--state", str(stack))
    assert down.returncode == 0
    assert not any(process_alive(p, s) for p, s in pids), "down must leave no process"
    assert not (stack / "public" / "workload.sock").exists()
    code, status = stack_status(config, stack)
    assert code == 1
    assert status["running"] is False

    # a restart reuses the trust domain
    up = tm("up", "--config", str(config), "--state", str(stack), "--detach")
    assert up.returncode == 0, up.stderr
    assert roots() == before

    # a crashed supervisor leaves nothing behind
    pids = stack_pids(stack)
    sup = json.loads((stack / "run" / "supervisor.json").read_text())
    os.kill(sup["pid"], signal.SIGKILL)  # no chance to clean up
    deadline = time.monotonic() + 15
    # its children die with it (parent-death signal), and a new `up` starts cleanly
    while time.monotonic() < deadline and any(process_alive(p, s) for p, s in pids):
        time.sleep(0.1)
    assert not any(process_alive(p, s) for p, s in pids)
    up = tm("up", "--config", str(config), "--state", str(stack), "--detach")
    assert up.returncode == 0, up.stderr
    code, _ = stack_status(config, stack)
    assert code == 0

    # another trust domain on the same state fails clearly
    assert tm("down", "--state", str(stack)).returncode == 0
    other = short_tmp / "other.yaml"
    other.write_text("trust_domain: other.example\ndev: true\n")
    up = tm("up", "--config", str(other), "--state", str(stack), "--detach")
    assert up.returncode == 1
    assert "spiffe://cli.example, not spiffe://other.example" in up.stderr
    assert "another --state directory" in up.stderr


def test_down_when_not_running(short_tmp: Path) -> None:
    result = tm("down", "--state", str(short_tmp / "nothing"))
    assert result.returncode == 0
    assert "not running" in result.stdout


def test_foreground_up_stops_every_child_on_ctrl_c(short_tmp: Path, config: Path) -> None:
    state = short_tmp / "fg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustmesh", "up", "--config", str(config), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, _ = stack_status(config, state)
            if code == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("foreground stack never became healthy")
        children = [(p, s) for p, s in stack_pids(state) if p != proc.pid]
        assert children
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not any(process_alive(p, s) for p, s in children)
        assert not (state / "public" / "workload.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_up_without_a_sealing_key_outside_dev_mode(short_tmp: Path) -> None:
    config = short_tmp / "prod.yaml"
    config.write_text("trust_domain: prod.example\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTMESH_SEAL")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trustmesh",
            "up",
            "--config",
            str(config),
            "--state",
            str(short_tmp / "p"),
            "--detach",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "TRUSTMESH_SEAL_KEY" in result.stderr
    assert not (short_tmp / "p" / "identity.db").exists()


def test_up_with_a_sealing_key_from_the_environment(short_tmp: Path) -> None:
    import base64

    config = short_tmp / "prod.yaml"
    config.write_text("trust_domain: prod.example\n")
    state = short_tmp / "p"
    env = {
        **os.environ,
        "TRUSTMESH_SEAL_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        SPAWN_ENV: "exec",
    }
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trustmesh",
                "up",
                "--config",
                str(config),
                "--state",
                str(state),
                "--detach",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "DEV MODE" not in result.stderr
        assert not (state / "seal.key").exists()
        # with TRUSTMESH_SPAWN=exec, every component is a fresh interpreter
        found = _component_processes(state)
        assert {name: comm for name, (comm, *_) in found.items()} == dict.fromkeys(found, "python")
    finally:
        tm("down", "--state", str(state))


def test_workload_api_workers_serve_and_stop(short_tmp: Path) -> None:
    from spiffe import WorkloadApiClient

    from trustmesh.identity.store import SqliteIdentityStore

    config = short_tmp / "workers.yaml"
    config.write_text("trust_domain: workers.example\ndev: true\nidentity: {workers: 3}\n")
    state = short_tmp / "w"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    assert up.returncode == 0, up.stderr
    try:
        identity = json.loads((state / "run" / "identity.json").read_text())["pid"]
        children = Path(f"/proc/{identity}/task/{identity}/children").read_text().split()
        workers = [(int(p), _start_time(int(p))) for p in children]
        assert len(workers) == 2
        store = SqliteIdentityStore(state / "identity.db")
        try:
            from trustmesh.config import load_config
            from trustmesh.events import MemorySink
            from trustmesh.identity import admin
            from trustmesh.identity.server import service_settings

            admin.register_entry(
                store,
                service_settings(load_config(config)),
                "spiffe://workers.example/api",
                [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"],
                None,
                MemorySink(),
            )
        finally:
            store.close()
        address = f"unix://{state}/public/workload.sock"
        # the leader's metrics count every process's SVIDs; `status` says where they are
        _, status = stack_status(config, state)
        url = next(c for c in status["components"] if c["name"] == "identity")["metrics_url"]  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:")
        for _ in range(12):  # separate connections: the kernel spreads them over processes
            with WorkloadApiClient(address) as client:
                assert str(client.fetch_x509_svid().spiffe_id) == "spiffe://workers.example/api"
        # as many as every process recorded in the event log (the stack's own SVIDs too)
        log = (state / "events" / "identity.jsonl").read_text().splitlines()
        recorded = sum(1 for line in log if "X.509-SVID issued" in line)
        assert recorded >= 12
        assert _issued(url, recorded) == recorded
    finally:
        assert tm("down", "--state", str(state)).returncode == 0
    assert not any(process_alive(p, s) for p, s in workers)


def _issued(url: str, expected: float, timeout: float = 10) -> float:
    """X.509-SVIDs issued, as the identity service's metrics say once they do say
    ``expected`` (its workers report once a second)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(url, timeout=10).text
        issued = next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "trustmesh_identity_svids_issued_total" and s.labels == {"type": "x509"}
        )
        if issued == expected or time.monotonic() > deadline:
            return issued
        time.sleep(0.2)


def _start_time(pid: int) -> int:
    from trustmesh.identity.attestation import start_time_of

    return start_time_of(pid)


def _component_processes(state: Path) -> dict[str, tuple[str, str, str, list[str]]]:
    """Each component process's name (``comm``), standard input and output, and any
    descriptor it holds on the supervisor's run files (its lock among them)."""
    found = {}
    for path in (state / "run").glob("*.json"):
        if path.stem == "supervisor":
            continue
        pid = json.loads(path.read_text())["pid"]
        fds = {int(fd.name): os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        run_files = [t for t in fds.values() if t.startswith(str(state / "run"))]
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        found[path.stem] = (comm, fds[0], fds[1], run_files)
    return found
