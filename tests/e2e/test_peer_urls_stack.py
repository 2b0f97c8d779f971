"""A gateway started as a Kubernetes pod starts it: an empty state directory of its own
and only the peers' variables (``TRUSTMESH_DISCOVERY_URL``, ``TRUSTMESH_AUTH_URL``,
``TRUSTMESH_AUDIT_URL``: :mod:`trustmesh.platform.endpoints`), beside a stack that
``trustmesh up`` runs with its files elsewhere. It finds discovery, the provider and,
through discovery, the service; without either the variable or the file it does not
start; a variable naming a listener of another identity is refused, as the peer's SPIFFE
ID is checked over mTLS — a URL says where, never who."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from trustmesh.testing import run_cli as tm

TD = "peers.example"
GATEWAY_ID = f"spiffe://{TD}/trustmesh/gateway"
CONFIG = """trust_domain: peers.example
dev: true
audit: {}
services:
  inventory: {run: "trustmesh.demo.inventory:app"}
gateway:
  routes:
    - {path: /items, to: inventory, methods: [GET], auth: [anonymous]}
    - {path: /held, to: inventory, methods: [GET], auth: [jwt]}
"""


@dataclass(frozen=True)
class Stack:
    root: Path
    config: Path
    state: Path
    urls: dict[str, str]  # each component's mTLS listener, as the stack says


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config, state = root / "trustmesh.yaml", root / "state"
    config.write_text(CONFIG)
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        ran = tm("status", "--config", str(config), "--state", str(state), "--json")
        status = json.loads(ran.stdout)
        urls = {c["name"]: c["url"] for c in status["components"]}
        yield Stack(root, config, state, {**urls, "workload_api": status["workload_api"]})
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    state: Path
    endpoint: dict[str, Any] | None

    def stderr(self) -> str:
        return (self.state.parent / f"{self.state.name}.err").read_text()


def _start_gateway(stack: Stack, name: str, peers: dict[str, str]) -> Started:
    """``python -m trustmesh.gateway`` on an empty state directory of its own, with a
    join token for the gateway's ID, the stack's Workload API and only ``peers``; its
    endpoint file once it serves (None when it exited first)."""
    state = stack.root / name
    state.mkdir(mode=0o700)
    token = tm("identity", "token", "create", "--spiffe-id", GATEWAY_ID,
               "--config", str(stack.config), "--state", str(stack.state))  # fmt: skip
    assert token.returncode == 0, token.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTMESH_")}
    env.update(
        SPIFFE_ENDPOINT_SOCKET=stack.urls["workload_api"],
        TRUSTMESH_JOIN_TOKEN=token.stdout.strip(),
        TRUSTMESH_REQUIRE_SERVICES=os.environ.get("TRUSTMESH_REQUIRE_SERVICES", ""),
        **peers,
    )
    argv = [sys.executable, "-m", "trustmesh.gateway", "--config", str(stack.config),
            "--state", str(state)]  # fmt: skip
    with (stack.root / f"{name}.err").open("wb") as err:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    endpoint = state / "gateway" / "endpoint.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not endpoint.exists():
        time.sleep(0.2)
    found = json.loads(endpoint.read_text()) if endpoint.exists() else None
    return Started(process, state, found)


@pytest.fixture
def started() -> Iterator[list[Started]]:
    running: list[Started] = []
    yield running
    for one in running:
        if one.process.poll() is None:
            one.process.terminate()
            one.process.wait(timeout=30)


def _discovery_url(stack: Stack) -> str:
    return str(json.loads((stack.state / "discovery.json").read_text())["url"])


def _unknown_key_denials(stack: Stack) -> int:
    """How many of the service's refusals name a gateway token signed with a key the
    stack's gateway never published (the pod's own gateway signed it)."""
    lines = (stack.state / "events" / "inventory.jsonl").read_text().splitlines()
    found = 0
    for line in lines:
        facts = json.loads(line)["unmapped"]["trustmesh"]
        if facts.get("reason") == "token-unknown-key" and facts.get("peer_spiffe_id") == GATEWAY_ID:
            found += 1
    return found


def _get(gateway: Started, path: str) -> requests.Response:
    """``path`` at the gateway's public listener, its dev-mode edge certificate checked."""
    assert gateway.endpoint is not None
    with requests.Session() as session:
        session.trust_env = False
        session.verify = str(gateway.state / "edge" / "ca.pem")
        return session.get(gateway.endpoint["url"] + path, timeout=30)


def test_a_gateway_with_only_the_variables_finds_its_peers(
    stack: Stack, started: list[Started]
) -> None:
    peers = {
        "TRUSTMESH_DISCOVERY_URL": _discovery_url(stack),
        "TRUSTMESH_AUTH_URL": stack.urls["auth"],  # a jwt route: it does not start without
        "TRUSTMESH_AUDIT_URL": stack.urls["audit"],
    }
    gateway = _start_gateway(stack, "pod", peers)
    started.append(gateway)
    assert gateway.endpoint is not None, gateway.stderr()
    # its state holds its own files only: no peer's endpoint file was there to read
    assert not (gateway.state / "discovery.json").exists()
    assert not (gateway.state / "auth").exists()
    assert not (gateway.state / "audit").exists()
    before = _unknown_key_denials(stack)
    # the provider's keys: a jwt route refuses a request without a token at the edge
    held = _get(gateway, "/held/1")
    assert held.status_code == 401
    # discovery named the service; the gateway called it over mTLS. The service knows only
    # the stack's gateway's keys, so it refuses this gateway's token — and says so
    reached = _get(gateway, "/items/1")
    assert reached.status_code == 401, reached.text
    deadline = time.monotonic() + 20  # the service writes its event log off the request path
    while _unknown_key_denials(stack) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _unknown_key_denials(stack) == before + 1


def test_without_the_variable_or_the_file_the_gateway_does_not_start(
    stack: Stack, started: list[Started]
) -> None:
    gateway = _start_gateway(stack, "lost", {"TRUSTMESH_AUTH_URL": stack.urls["auth"]})
    started.append(gateway)
    assert gateway.endpoint is None
    assert gateway.process.wait(timeout=30) == 1
    said = gateway.stderr()
    assert "discovery (the identity service) is not running" in said
    assert "TRUSTMESH_DISCOVERY_URL is not set" in said
    assert f"{gateway.state / 'discovery.json'} names no URL" in said


def test_a_variable_naming_another_identity_is_refused(
    stack: Stack, started: list[Started]
) -> None:
    """The provider's mTLS listener given as discovery's: a real server of the trust
    domain, with the wrong SPIFFE ID — the gateway asks it nothing and routes nowhere."""
    before = _unknown_key_denials(stack)
    peers = {
        "TRUSTMESH_DISCOVERY_URL": stack.urls["auth"],
        "TRUSTMESH_AUTH_URL": stack.urls["auth"],
        "TRUSTMESH_AUDIT_URL": "none",
    }
    gateway = _start_gateway(stack, "misled", peers)
    started.append(gateway)
    assert gateway.endpoint is not None, gateway.stderr()
    assert _get(gateway, "/items/1").status_code == 503
    time.sleep(1)  # as long as a refusal took to be written above
    assert _unknown_key_denials(stack) == before  # the service was never called
    expected = f"is spiffe://{TD}/trustmesh/auth, expected spiffe://{TD}/trustmesh/identity"
    assert expected in gateway.stderr()


def test_a_provider_variable_naming_another_identity_stops_the_start(
    stack: Stack, started: list[Started]
) -> None:
    peers = {
        "TRUSTMESH_DISCOVERY_URL": _discovery_url(stack),
        "TRUSTMESH_AUTH_URL": _discovery_url(stack),  # discovery's listener, not the provider's
        "TRUSTMESH_AUDIT_URL": "none",
    }
    gateway = _start_gateway(stack, "fooled", peers)
    started.append(gateway)
    assert gateway.endpoint is None, "started trusting a provider of another identity"
    assert gateway.process.wait(timeout=30) == 1
    assert f"spiffe://{TD}/trustmesh/identity" in gateway.stderr()
