"""`gateway.workers: 3` under `trustmesh up` (issue 21's scale-out configuration): three
gateway processes on one client port (SO_REUSEPORT), each with its own SVID, log and
metrics, sharing the rate limit through a private Redis. Requests on new connections
reach every worker; together they admit at most 1.02× the limit; a block made through
the first worker's admin API holds in the others within a quarter second; `trustmesh
gateway reload` reaches every worker; a worker killed is replaced by the supervisor
while the others keep serving every request."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from trustmesh.cli import _admin
from trustmesh.testing import PrivateRedis
from trustmesh.testing import run_cli as tm

pytestmark = pytest.mark.xdist_group("gateway_workers_stack")

LIMIT = 60
WORKERS = 3
CONFIG = """trust_domain: workers.example
dev: true
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  workers: {workers}
  redis: "{redis}"
  metrics_port: 0
  rate_limits: [{{per: ip, limit: {limit}/minute}}]
  routes:
    - {{path: /items, to: inventory, methods: [GET], auth: [anonymous]}}
"""


@contextlib.contextmanager
def workers_stack() -> Iterator[tuple[Path, Path]]:
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    redis = PrivateRedis(root)
    redis.start()
    config, state = root / "trustmesh.yaml", root / "state"
    config.write_text(CONFIG.format(workers=WORKERS, redis=redis.url, limit=LIMIT))
    try:
        up = tm("up", "--config", str(config), "--state", str(state), "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        yield config, state
        assert tm("down", "--state", str(state)).returncode == 0
    finally:
        tm("down", "--state", str(state))
        redis.kill()
        shutil.rmtree(root, ignore_errors=True)


def status(config: Path, state: Path, *, healthy: bool = True) -> dict[str, dict[str, Any]]:
    """`status --json` by component (exit 1 while one is down: ``healthy=False``)."""
    ran = tm("status", "--config", str(config), "--state", str(state), "--json")
    assert ran.returncode in ((0,) if healthy else (0, 1)), ran.stdout + ran.stderr
    return {c["name"]: c for c in json.loads(ran.stdout)["components"]}


def get(url: str, state: Path) -> int:
    """One request on a connection of its own (the kernel picks the worker per connection)."""
    with requests.Session() as client:
        client.trust_env = False
        return client.get(url, verify=str(state / "edge" / "ca.pem"), timeout=10).status_code


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited and been reaped (a zombie leader may still have
    threads that hold its sockets; the supervisor reaps it once all are gone)."""
    return not Path(f"/proc/{pid}").exists()


def served(metrics_url: str) -> float:
    """How many requests a worker answered, as its metrics say."""
    text = requests.get(metrics_url, timeout=5).text
    return sum(
        float(m[1])
        for m in re.finditer(r"^trustmesh_gateway_requests_total\{.*\} (\S+)$", text, re.M)
    )


def test_workers_share_the_port_the_limit_and_the_blocks() -> None:
    with workers_stack() as (config, state):
        rows = status(config, state)
        names = ["gateway"] + [f"gateway-{k}" for k in range(2, WORKERS + 1)]
        workers = [rows[name] for name in names]
        assert all(w["healthy"] for w in workers), workers
        assert len({w["pid"] for w in workers}) == WORKERS
        assert len({w["internal_url"] for w in workers}) == WORKERS  # each its own mTLS listener
        public = json.loads((state / "gateway" / "endpoint.json").read_text())["url"]
        for k in range(2, WORKERS + 1):
            doc = json.loads((state / "gateway" / f"endpoint-{k}.json").read_text())
            assert doc["url"] == public  # one client port for all

        answers = [get(f"{public}/items/tea", state) for _ in range(LIMIT + 40)]
        admitted = answers.count(200)
        assert LIMIT * 0.9 <= admitted <= LIMIT * 1.02, answers  # shared through Redis
        assert set(answers) <= {200, 429}
        counts = [served(str(w["metrics_url"])) for w in workers]
        assert all(c > 0 for c in counts), f"a worker served nothing: {counts}"

        # a block made through the first worker's admin API holds in every worker
        body = {"address": "127.0.0.1", "seconds": 60, "reason": "test"}
        _admin.call(state, "gateway", "POST", "/admin/v1/blocks", body)
        time.sleep(0.3)  # LOOK_EVERY: how often each worker looks at the shared file
        assert {get(f"{public}/items/tea", state) for _ in range(12)} == {403}
        _admin.call(state, "gateway", "DELETE", "/admin/v1/blocks/127.0.0.1")
        time.sleep(0.3)
        assert 403 not in {get(f"{public}/items/tea", state) for _ in range(12)}

        reloaded = tm("gateway", "reload", "--state", str(state))
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        for k in range(1, WORKERS + 1):
            name = "reload.json" if k == 1 else f"reload-{k}.json"
            assert json.loads((state / "gateway" / name).read_text())["ok"] is True

        # a worker killed (what it had queued dies with it): once it is gone the others
        # serve every request; the supervisor starts another
        victim = int(rows["gateway-2"]["pid"])
        os.kill(victim, signal.SIGKILL)
        while not gone(victim):
            time.sleep(0.01)
        during = {get(f"{public}/items/tea", state) for _ in range(10)}
        assert during <= {200, 429}, during
        deadline = time.monotonic() + 30
        while True:
            again = status(config, state, healthy=False)["gateway-2"]
            if again["healthy"] and again["pid"] not in (None, victim):
                break
            assert time.monotonic() < deadline, f"gateway-2 was not replaced: {again}"
            time.sleep(0.5)
