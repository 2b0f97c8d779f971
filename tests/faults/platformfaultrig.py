"""What the platform fault tests kill for real, and how they look at it.

- :class:`Stack`: `trustmesh up --detach`, whose components are killed (SIGKILL) while
  the supervisor is held still (SIGSTOP), so that an outage lasts as long as the test
  says, then let go (SIGCONT) to restart them as it would; its gateway as a client
  reaches it, its producers' event logs and spools, the collector's records as the
  operator reads them, access tokens from sign-ins at its provider.
- :class:`SecretsProcess`: ``python -m trustmesh.secrets`` on a fixed port, killed and
  started again on the same state.
- :func:`served_certificate`: the SVID a TLS server presents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))  # authrig
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "secrets"))  # secretsrig

from authrig import code_flow

from trustmesh.cli._admin import admin_request, as_operator
from trustmesh.cli.auth_cmd import admin_call
from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.testing import run_cli as tm
from trustmesh.testing import until
from trustmesh.testing.process import stop_process

T = TypeVar("T")
Event = dict[str, Any]


class Scale(Protocol):
    """The ``fault_scale`` fixture (tests/faults/conftest.py): the CI form or the long one."""

    def pick(self, short: float, long: float) -> float: ...

    def count(self, short: int, long: int) -> int: ...


def _state_of(pid: int) -> str | None:
    """The process's state letter (``Z`` a zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


@dataclass
class Stack:
    """`trustmesh up --detach` with ``declaration``, in a short temporary folder."""

    declaration: str
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tmf", dir="/tmp")))

    @property
    def config_file(self) -> Path:
        return self.root / "trustmesh.yaml"

    @property
    def state(self) -> Path:
        return self.root / "s"

    @property
    def config(self) -> TrustmeshConfig:
        return load_config(self.config_file)

    def up(self) -> None:
        self.config_file.write_text(self.declaration)
        started = tm(
            "up", "--config", str(self.config_file), "--state", str(self.state), "--detach"
        )
        assert started.returncode == 0, started.stdout + started.stderr

    def down(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):  # never left stopped
            os.kill(self.pid("supervisor"), signal.SIGCONT)
        tm("down", "--state", str(self.state))
        shutil.rmtree(self.root, ignore_errors=True)

    # -- processes --------------------------------------------------------------------------
    def run_file(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.state / "run" / f"{name}.json").read_text()))

    def pid(self, name: str) -> int:
        return int(self.run_file(name)["pid"])

    def endpoint(self, component: str) -> dict[str, Any]:
        return dict(json.loads((self.state / component / "endpoint.json").read_text()))

    @contextlib.contextmanager
    def supervisor_held(self) -> Iterator[None]:
        """The supervisor stopped (SIGSTOP): a component killed meanwhile stays down (a
        zombie, its sockets closed) until this ends and the supervisor restarts it."""
        supervisor = self.pid("supervisor")
        os.kill(supervisor, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(supervisor, signal.SIGCONT)

    def kill(self, name: str) -> int:
        """SIGKILL to ``name``'s process; its pid once it is dead (it closed its sockets)."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        until(lambda: _state_of(pid) in (None, "Z"), f"{name} (pid {pid}) dead", within=10)
        return pid

    def restarted(self, name: str, old: int, ready: Callable[[], bool], seconds: float = 30) -> int:
        """The pid of ``name``'s next process, once the supervisor started it and
        ``ready`` says it serves."""
        until(lambda: self.pid(name) != old and ready(), f"{name} restarted", within=seconds)
        return self.pid(name)

    # -- clients ----------------------------------------------------------------------------
    def browser(self) -> requests.Session:
        """An HTTPS client of the public listeners (the dev edge CA)."""
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.state / "edge" / "ca.pem")
        return session

    def gateway_url(self) -> str:
        return str(self.endpoint("gateway")["url"])

    def public_auth_url(self) -> str:
        return str(self.endpoint("auth")["public_url"])

    def access_tokens(self, audience: str, count: int) -> list[str]:
        """``count`` access tokens for ``audience``, each from its own sign-in (code +
        PKCE) of a user made for it at the provider."""
        config, client, redirect = self.config, "faults-web", "https://shop.example/cb"
        admin_call(
            config,
            self.state,
            "POST",
            "/admin/v1/clients",
            {
                "client_id": client,
                "method": "none",
                "redirect_uris": [redirect],
                "audiences": [audience],
            },
        )
        password = secrets.token_urlsafe(24)
        tokens = []
        for n in range(count):
            user = f"user{n}"
            body = {"username": user, "password": password}
            admin_call(config, self.state, "POST", "/admin/v1/users", body)
            with self.browser() as browser:
                answer = code_flow(
                    browser, self.public_auth_url(), client, redirect, user, password
                )
            tokens.append(str(answer["access_token"]))
        return tokens

    def log_text(self, component: str) -> str:
        """What ``component``'s processes wrote to their log (stderr)."""
        return (self.state / "logs" / f"{component}.log").read_text(errors="replace")

    def event_log(self, component: str) -> list[Event]:
        """The events ``component`` recorded, from its local log (written from its spool,
        a spooled batch at a time)."""
        path = self.state / "events" / f"{component}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def spool_bytes(self, component: str) -> bytes:
        """What ``component``'s audit spool holds on disk, every segment."""
        folder = self.state / "spool" / component
        return b"".join(p.read_bytes() for p in sorted(folder.glob("seg-*.log")))

    def stored_events(self) -> list[Event]:
        """Every record of the collector, in its order (seq), as the operator reads it."""

        async def read() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            async with as_operator(self.state, self.config) as operator:
                after = 0
                while True:
                    page = await admin_request(
                        operator,
                        self.state,
                        "audit",
                        "GET",
                        f"/v1/events?after={after}&limit=1000",
                    )
                    if not page["events"]:
                        return found
                    found += page["events"]
                    after = page["events"][-1]["seq"]

        return asyncio.run(read())


@contextlib.contextmanager
def stack_up(declaration: str) -> Iterator[Stack]:
    stack = Stack(declaration)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def trustmesh_of(event: Event) -> dict[str, Any]:
    return dict(event["unmapped"]["trustmesh"])


def uid_of(event: Event) -> str:
    return str(event["metadata"]["uid"])


def path_of(event: Event) -> str | None:
    path = trustmesh_of(event).get("attributes", {}).get("path")
    return path if isinstance(path, str) else None


def component_of(event: Event) -> str:
    return str(event["metadata"]["product"]["feature"]["name"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SecretsProcess:
    """``python -m trustmesh.secrets`` (as ``trustmesh up`` runs it) on a fixed port of
    127.0.0.1, taking its SVID from ``identity_address``; killed and started again on the
    same state and port."""

    def __init__(self, folder: Path, identity_address: str, declaration: str) -> None:
        self.config_file = folder / "trustmesh.yaml"
        self.state = folder / "state"
        folder.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(declaration)
        self.events = folder / "events.jsonl"
        self.env = {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": identity_address,
            "TRUSTMESH_EVENTS": str(self.events),  # its event log
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    async def start(self) -> str:
        argv = [sys.executable, "-m", "trustmesh.secrets", "--config", str(self.config_file)]
        log = open(self.state.parent / "secrets.log", "ab")  # noqa: SIM115 - the child's
        with log:
            self.proc = subprocess.Popen(
                [*argv, "--state", str(self.state)], env=self.env, stdout=log, stderr=log
            )
        endpoint = self.state / "secrets" / "endpoint.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the secrets service exited: {self.log()}"
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(endpoint.read_text())
                if doc.get("pid") == self.proc.pid:
                    self.url = str(doc["url"])
                    return self.url
            await asyncio.sleep(0.05)
        self.stop()
        raise AssertionError(f"the secrets service did not start: {self.log()}")

    def log(self) -> str:
        return (self.state.parent / "secrets.log").read_text(errors="replace")[-3000:]

    def reasons(self) -> list[str]:
        """The reasons of the events it recorded, in order."""
        lines = self.events.read_text().splitlines() if self.events.exists() else []
        return [str(json.loads(line)["status_detail"]) for line in lines if line.strip()]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)


def served_certificate(url: str) -> x509.Certificate:
    """The certificate a TLS server at ``url`` presents (its SVID, for an mTLS listener:
    TLS 1.3 shows it before the server asks for ours)."""
    parts = urlsplit(url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only looked at, never trusted
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
