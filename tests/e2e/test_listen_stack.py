"""``listen: {host: 0.0.0.0}`` on a stack ``trustmesh up`` runs: every listener of every
component and of a service takes connections at an address of this machine that is not
loopback, and still at 127.0.0.1; what the stack says of itself (``status --json``, the
service's discovery entry, the issuer) names loopback, which connects; the metrics stay
on loopback only.

The stack runs outside dev mode (a dev-mode declaration listens on loopback only): the
sealing key in the environment, the browser-facing listeners' certificate issued here
for 127.0.0.1 and the address under test."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import spiffe_http
from addresses import machine_address

from trustmesh import crypto
from trustmesh.testing import run_cli as tm

ADDRESS = machine_address()
pytestmark = pytest.mark.skipif(
    ADDRESS is None, reason="this machine has no non-loopback IPv4 address to listen on"
)
TD = "bind.example"
TESTER = f"spiffe://{TD}/tester"

DECLARATION = """\
trust_domain: bind.example
listen: {host: 0.0.0.0}
auth:
  public_tls_cert: tls/edge.pem
  public_tls_key: tls/edge.key
gateway:
  tls_cert: tls/edge.pem
  tls_key: tls/edge.key
  metrics_port: 0
  routes:
    - {path: /items, to: inventory, methods: [GET], auth: [anonymous]}
audit:
  console: {tls_cert: tls/edge.pem, tls_key: tls/edge.key}
services:
  inventory: {run: "trustmesh.demo.inventory:app"}
"""


@dataclass(frozen=True)
class Stack:
    status: dict[str, Any]
    ca: Path  # of the browser-facing listeners' certificate
    tester: spiffe_http.Workload  # an SVID of the trust domain, for the mTLS listeners


def _certificate(folder: Path, names: list[str]) -> Path:
    """A server certificate for ``names`` (its CA's file returned)."""
    now = dt.datetime.now(dt.UTC)
    key = crypto.generate_key()
    ca = crypto.create_edge_ca(key, now=now)
    leaf = crypto.issue_server_certificate(names, ca, key, now=now)
    folder.mkdir()
    (folder / "edge.pem").write_bytes(leaf.chain_pem())
    (folder / "edge.key").write_bytes(leaf.key_pem())
    (folder / "ca.pem").write_text(crypto.cert_pem(ca))
    return folder / "ca.pem"


async def _svid(address: str, where: Path) -> spiffe_http.Workload:
    """The tester's SVID as files (the source closed: the files are what is used)."""
    workload = await spiffe_http.workload(address, TESTER, where, spiffe_http.Workload)
    await workload.source.close()
    return workload


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    assert ADDRESS is not None
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config, state = root / "trustmesh.yaml", root / "state"
    ca = _certificate(root / "tls", ["localhost", "127.0.0.1", ADDRESS])
    config.write_text(DECLARATION)
    seal_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    env = {**os.environ, crypto.SEAL_KEY_ENV: seal_key}
    env.pop("TRUSTMESH_LISTEN_HOST", None)
    env.pop("TRUSTMESH_LISTEN_PORTS", None)
    try:
        up = tm("up", "--config", str(config), "--state", str(state), "--detach", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        try:
            given = ("--config", str(config), "--state", str(state))
            selector = ("--selector", f"unix:uid:{os.getuid()}")
            registered = tm("identity", "register", *given, "--spiffe-id", TESTER, *selector)
            assert registered.returncode == 0, registered.stderr
            status = json.loads(tm("status", *given, "--json", env=env).stdout)
            tester = asyncio.run(_svid(status["workload_api"], root / "pki"))
            yield Stack(status, ca, tester)
        finally:
            assert tm("down", "--state", str(state)).returncode == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _component(stack: Stack, name: str) -> dict[str, Any]:
    (row,) = [c for c in stack.status["components"] if c["name"] == name]
    return dict(row)


def _listeners(stack: Stack) -> list[tuple[str, str, str]]:
    """``(what, url, path)`` of every listener: mTLS ones (``what`` starting ``mtls``), the
    browser-facing ones (``web``), and the path asked there (the gateway's is forwarded to
    the service, at the address the service registered with discovery)."""
    auth, audit, gateway = (_component(stack, n) for n in ("auth", "audit", "gateway"))
    (instance,) = stack.status["instances"]
    return [
        ("mtls discovery", _component(stack, "discovery")["url"], "/healthz"),
        ("mtls audit", audit["url"], "/v1/health"),
        ("mtls auth", auth["url"], "/healthz"),
        ("mtls gateway internal", gateway["internal_url"], "/healthz"),
        ("mtls inventory", instance["url"], "/items/tea"),
        ("web auth", auth["public_url"], "/.well-known/openid-configuration"),
        ("web console", audit["console_url"], "/signin"),
        ("web gateway", gateway["url"], "/items/tea"),
    ]


def _at(url: str, host: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{host}:{parts.port}").geturl()


def _get(stack: Stack, what: str, url: str) -> int:
    if what.startswith("mtls"):
        with stack.tester.session() as session:
            return session.get(url, timeout=10).status_code
    return requests.get(url, verify=str(stack.ca), timeout=10).status_code


def test_every_listener_answers_at_an_address_of_this_machine_and_on_loopback(
    stack: Stack,
) -> None:
    """The same answer at both addresses: the same server, over the same TLS."""
    assert ADDRESS is not None
    listeners = _listeners(stack)
    for what, url, path in listeners:
        here, there = (_get(stack, what, _at(url, h) + path) for h in ("127.0.0.1", ADDRESS))
        # the tester may call no route of the service: its call policy's refusal is its answer
        assert here == there == (403 if what == "mtls inventory" else 200), (what, here, there)
    assert len({urlsplit(url).port for _, url, _ in listeners}) == len(listeners)


def test_what_the_stack_says_of_itself_names_loopback(stack: Stack) -> None:
    """A wildcard names no address to connect to: every URL the stack publishes — its
    components', the issuer, the service's discovery entry — names 127.0.0.1."""
    urls = [instance["url"] for instance in stack.status["instances"]]
    for row in stack.status["components"]:
        for key in ("url", "internal_url", "public_url", "issuer", "console_url", "metrics_url"):
            if isinstance(row.get(key), str) and row[key].startswith(("https://", "http://")):
                urls.append(row[key])
    assert len(urls) >= 12
    assert {urlsplit(url).hostname for url in urls} == {"127.0.0.1"}
    # the console too: its certificate is the declaration's (a private CA's, naming no
    # loopback address), and status pins that certificate instead of asking a CA
    assert {row["name"]: row["healthy"] for row in stack.status["components"]}["console"]
    assert all(row["healthy"] for row in stack.status["components"])


def test_the_metrics_stay_on_loopback(stack: Stack) -> None:
    assert ADDRESS is not None
    scraped = [row["metrics_url"] for row in stack.status["components"] if row.get("metrics_url")]
    assert {"identity", "audit", "auth", "gateway", "inventory"} <= {
        row["name"] for row in stack.status["components"] if row.get("metrics_url")
    }
    for url in scraped:
        assert requests.get(url, timeout=10).status_code == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ADDRESS, urlsplit(url).port), timeout=5).close()
