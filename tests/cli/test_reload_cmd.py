"""``trustmesh reload`` on a stack the supervisor of ``trustmesh up`` runs as real
processes: a changed declaration (a route, a rate limit, an edge policy, secrets
policies) is applied while requests keep flowing through the gateway — none fails, none
is dropped, and the requests after it follow the new declaration; a bad one (invalid
YAML, a schema error, a Cedar policy that does not parse, a file the gateway cannot
compile, a change only a restart applies) is refused with exit 2, naming the problem,
and the stack behaves exactly as before."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from clirig import tm
from slowapp import write_slow_app

from trustmesh.cli.supervisor import RunPaths, read_json, stop_stack
from trustmesh.testing import until

pytestmark = pytest.mark.xdist_group("reload-cmd")

CONFIG = """trust_domain: reload.example
dev: true
services:
  slow: {run: "reloadslow:app"}
gateway:
  policies: [edge.cedar]
  rate_limits: [{per: ip, limit: 100000/minute}]
  routes:
    - {path: /a, to: slow, methods: [GET], auth: [anonymous]}
    - {path: /b, to: slow, methods: [GET], auth: [anonymous]}
    - {path: /c, to: slow, methods: [GET], auth: [anonymous]}
secrets:
  policies:
    - {identity: operator, allow: {"secret/*": [read]}}
"""
POLICY = "permit(principal, action, resource);\n"
#: The declaration changed: a route removed, a rate limit, an edge policy, a secrets
#: policy.
CHANGED = (
    CONFIG.replace(
        "    - {path: /b, to: slow, methods: [GET], auth: [anonymous]}\n"
        "    - {path: /c, to: slow, methods: [GET], auth: [anonymous]}\n",
        "    - {path: /b, to: slow, methods: [GET], auth: [anonymous],\n"
        "       rate_limits: [{per: ip, limit: 2/minute}]}\n",
    )
    + '    - {identity: slow, allow: {"secret/data/slow/*": [read]}}\n'
)
CHANGED_POLICY = (
    POLICY + 'forbid(principal, action, resource) when { context.path like "/a/denied*" };\n'
)


@dataclass(frozen=True)
class Stack:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "trustmesh.yaml"

    def declare(self, config: str, policy: str) -> None:
        self.config.write_text(config)
        (self.root / "edge.cedar").write_text(policy)

    def reloads(self) -> object:
        """When the gateway last answered a reload (None: never)."""
        return (read_json(self.state / "gateway" / "reload.json") or {}).get("at")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The supervisor of ``trustmesh up`` (its detached form), with a service that
    answers ``/a/slow`` 200 ms late."""
    running = Stack(Path(tempfile.mkdtemp(prefix="tm", dir="/tmp")))
    write_slow_app(running.root / "reloadslow.py", "/a/slow", 0.2)
    running.declare(CONFIG, POLICY)
    paths = RunPaths(running.state)
    paths.logs.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(running.root), *sys.path])}
    argv = [sys.executable, "-m", "trustmesh", "_supervise"]
    argv += ["--config", str(running.config), "--state", str(running.state)]
    with paths.log("supervisor").open("ab") as log:  # where `up --detach` logs
        supervisor = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        phase = lambda: (read_json(paths.supervisor) or {}).get("phase")  # noqa: E731
        until(
            lambda: phase() in ("ready", "failed") or supervisor.poll() is not None, "up", within=60
        )
        assert phase() == "ready"
        yield running
    finally:
        supervisor.terminate()  # as `down` does; waited for here, where it is a child
        supervisor.wait(60)
        stop_stack(running.state, print)  # anything it left
        shutil.rmtree(running.root, ignore_errors=True)


class Client:
    """Requests to the stack's gateway, over TLS checked against the dev edge CA."""

    def __init__(self, stack: Stack) -> None:
        endpoint = read_json(stack.state / "gateway" / "endpoint.json") or {}
        self.url = str(endpoint["url"])
        self.tls = ssl.create_default_context(cafile=str(stack.state / "edge" / "ca.pem"))

    async def statuses(self, *paths: str) -> list[int]:
        async with aiohttp.ClientSession() as session:
            found = []
            for path in paths:
                async with session.get(self.url + path, ssl=self.tls) as response:
                    found.append(response.status)
            return found

    async def load(self, stop: asyncio.Event, answers: list[int | str]) -> None:
        """Requests back to back on one connection, each in flight 200 ms, until ``stop``;
        each answer's status (or what failed) in ``answers``."""
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(self.url + "/a/slow", ssl=self.tls) as response:
                        await response.read()
                        answers.append(response.status)
                except aiohttp.ClientError as exc:
                    answers.append(repr(exc))


def _reload(stack: Stack) -> subprocess.CompletedProcess[str]:
    """``trustmesh reload`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "trustmesh", "reload", "--state", str(stack.state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


BEHAVIOUR = ("/a/x", "/a/denied", "/b/x", "/c/x")


async def test_a_reload_under_load_drops_nothing_and_applies_routes_policies_and_limits(
    stack: Stack,
) -> None:
    client = Client(stack)
    assert await client.statuses(*BEHAVIOUR, "/b/x", "/b/x") == [200, 200, 200, 200, 200, 200]
    stack.declare(CHANGED, CHANGED_POLICY)
    stop, answers = asyncio.Event(), []
    load = [asyncio.create_task(client.load(stop, answers)) for _ in range(16)]
    await asyncio.sleep(0.5)
    before = len(answers)
    done = await asyncio.to_thread(_reload, stack)
    across = len(answers) - before
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*load)
    assert done.returncode == 0, done.stderr
    assert "gateway (routes, policies, rate limits)" in done.stdout
    assert "identities: operator, slow" in done.stdout  # the secrets service's new policies
    assert across >= 16  # the load went on across the reload
    assert set(answers) == {200}, [a for a in answers if a != 200][:5]
    # after it: the new edge policy, the route removed, the new rate limit
    assert await client.statuses(*BEHAVIOUR, "/b/x", "/b/x") == [200, 403, 200, 404, 200, 429]


BAD = [
    ("invalid YAML", lambda c, p: (c + "gateway: [\n", p), "trustmesh.yaml:"),
    (
        "a schema error",
        lambda c, p: (c.replace("auth: [anonymous]}", "auth: [anonymous], methd: GET}", 1), p),
        "gateway.routes[0].methd: unknown key",
    ),
    ("a Cedar policy that does not parse", lambda c, p: (c, p + "forbid(principal,"), "edge.cedar"),
    (
        "a file the gateway cannot compile",
        lambda c, p: (c.replace("methods: [GET], auth", "openapi: nowhere.yaml, auth", 1), p),
        "the gateway refused it",
    ),
    (
        "a service run another way",
        lambda c, p: (c.replace('{run: "reloadslow:app"}', '{run: "reloadslow:other"}'), p),
        "services.slow.run changed",
    ),
    (
        "a changed port",
        lambda c, p: (c.replace("gateway:\n", "gateway:\n  port: 1\n"), p),
        "gateway.port changed: it takes a restart",
    ),
    (
        "a changed trust domain and a new service",
        lambda c, p: (
            c.replace("reload.example", "other.example").replace(
                "services:\n", 'services:\n  more: {run: "reloadslow:app"}\n'
            ),
            p,
        ),
        "trust_domain changed",
    ),
]


async def test_a_bad_declaration_is_refused_whole_and_the_running_one_stays(
    stack: Stack,
) -> None:
    client = Client(stack)
    stack.declare(CHANGED, CHANGED_POLICY)  # what runs, if the test above ran
    assert (await asyncio.to_thread(tm, "reload", "--state", str(stack.state))).returncode == 0
    running = await client.statuses(*BEHAVIOUR)
    for what, change, problem in BAD:
        stack.declare(*change(CHANGED, CHANGED_POLICY))
        before = stack.reloads()
        refused = await asyncio.to_thread(tm, "reload", "--state", str(stack.state))
        assert refused.returncode == 2, what
        assert "reload refused, nothing was applied" in refused.stderr, what
        assert problem in refused.stderr, (what, refused.stderr)
        if problem != "the gateway refused it":
            assert stack.reloads() == before, what  # the gateway was not even asked
        assert await client.statuses(*BEHAVIOUR) == running, what
    stack.declare(CHANGED, CHANGED_POLICY)


async def test_a_new_route_is_accepted_by_its_service_before_the_gateway_forwards_it(
    stack: Stack,
) -> None:
    """The service compiles the calls it accepts again (SIGHUP to its runner, no
    restart): the gateway's new route reaches it, and one removed is refused there
    again once reloaded back."""
    client = Client(stack)
    stack.declare(CHANGED, CHANGED_POLICY)
    assert (await asyncio.to_thread(tm, "reload", "--state", str(stack.state))).returncode == 0
    pid = (read_json(RunPaths(stack.state).component("slow")) or {}).get("pid")
    assert await client.statuses("/d/x") == [404]
    routed = CHANGED.replace(
        "  routes:\n", "  routes:\n    - {path: /d, to: slow, auth: [anonymous]}\n"
    )
    stack.declare(routed, CHANGED_POLICY)
    done = await asyncio.to_thread(tm, "reload", "--state", str(stack.state))
    assert done.returncode == 0, done.stderr
    assert "calls accepted by slow" in done.stdout
    assert await client.statuses("/d/x", "/a/x") == [200, 200]
    answer = read_json(stack.state / "run" / "slow.reload.json") or {}
    assert answer["ok"] is True
    assert (read_json(RunPaths(stack.state).component("slow")) or {}).get("pid") == pid
    stack.declare(CHANGED, CHANGED_POLICY)  # back: the route and what slow accepts
    assert (await asyncio.to_thread(tm, "reload", "--state", str(stack.state))).returncode == 0
    assert await client.statuses("/d/x", "/a/x") == [404, 200]


def test_reload_names_the_running_file_and_needs_a_running_stack(
    stack: Stack, short_tmp: Path
) -> None:
    other = short_tmp / "trustmesh.yaml"
    other.write_text(CHANGED)
    wrong = tm("reload", "--state", str(stack.state), "--config", str(other))
    assert wrong.returncode == 2
    assert f"the stack runs from {stack.config}" in wrong.stderr
    same = tm("reload", "--state", str(stack.state), "--config", str(stack.config))
    assert same.returncode == 0, same.stderr
    idle = tm("reload", "--state", str(short_tmp / "nothing"))
    assert idle.returncode == 1
    assert "trustmesh is not running" in idle.stderr
    assert json.loads((stack.state / "gateway" / "reload.json").read_text())["ok"] is True
