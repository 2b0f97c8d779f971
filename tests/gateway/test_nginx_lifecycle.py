"""The lifecycle of ``gateway.engine: nginx`` (:class:`trustmesh.gateway.nginx.NginxEngine`),
live: real nginx processes, real TLS, real requests on 127.0.0.1.

- a reloaded declaration is what serves once :meth:`settled` returns (a new route
  answers, a removed one does not, a header allow-list only nginx enforces is the new one);
- a configuration ``nginx -t`` refuses raises ``ConfigError`` and the running one serves on;
- nginx crashed is started again, at most ``MAX_RESTARTS`` times, then the engine fails;
- a rotated SVID is what nginx presents upstream next;
- ``stop()`` leaves no nginx process and no key folder behind.

nginx's processes are found in ``/proc`` by this file (the master from its pid file, the
workers by their parent), not with the engine's own helpers. The restart window (a minute
of ``time.monotonic()``, no clock parameter) is not tested: only restarts in a row are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from authrig import CONFIG, identity_for
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from edgerig import Answer, Edge, edge_stack
from liverig import GATEWAY, live_identity, within
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_engines_live import forwarding, proxy_log

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.gateway import nginx as nginx_engine
from trustmesh.gateway.nginx import MAX_RESTARTS, NginxEdge, NginxEngine
from trustmesh.gateway.nginxconf import NginxPlan
from trustmesh.sdk import drain
from trustmesh.testing import RunningIdentityServer

pytestmark = pytest.mark.usefixtures("nginx_available")

SECTION = """gateway:
  engine: nginx
  nginx: {workers: 2}
  waf: {mode: "off"}
  routes:
    - {path: /ping, to: orders, auth: [anonymous], methods: [GET]}
    - {path: /old, to: orders, auth: [anonymous], methods: [GET]}
    - {path: /strict, to: orders, auth: [anonymous], methods: [GET],
       request_headers: [x-tenant]}
"""
#: /old replaced by /new, and the header /strict forwards changed (nginx alone enforces it).
RELOADED = SECTION.replace("/old,", "/new,").replace("[x-tenant]", "[x-other]")
#: /old's POST in a route of its own (the declaration allows one route per path and method).
SPLIT = SECTION.replace(
    "    - {path: /strict,",
    "    - {path: /old, to: orders, auth: [anonymous], methods: [POST]}\n    - {path: /strict,",
)
#: Every route sent to another service (which has no instance).
RETARGETED = SECTION.replace("to: orders", "to: payments")
DEADLINE = 20.0  # seconds: for anything nginx does on its own time


@dataclass(frozen=True)
class Seen:
    """A request that reached the upstream, and the client certificate nginx presented."""

    path: str
    headers: dict[str, str]
    serial: int
    spiffe_id: str
    thumbprint: str  # x5t#S256 of the certificate presented


@dataclass
class Upstream:
    seen: list[Seen]
    held: asyncio.Event  # a request to /old/hold has arrived
    release: asyncio.Event  # and is answered once this is set

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


def upstream_app(upstream: Upstream) -> Starlette:
    async def record(request: Request) -> JSONResponse:
        (pem, *_) = request.scope["extensions"]["tls"]["client_cert_chain"]
        cert = x509.load_pem_x509_certificate(pem.encode())
        headers = {k.decode(): v.decode() for k, v in request.scope["headers"]}
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
        thumbprint = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        upstream.seen.append(
            Seen(
                request.url.path,
                headers,
                cert.serial_number,
                crypto.uri_sans(cert)[0],
                thumbprint,
            )
        )
        if request.url.path == "/old/hold":
            upstream.held.set()
            await asyncio.wait_for(upstream.release.wait(), 60)
        return JSONResponse({"reached": True})

    return Starlette(routes=[Route("/{p:path}", record, methods=["GET", "POST"])])


@dataclass
class Stack:
    edge: Edge
    upstream: Upstream
    root: Path  # the declaration's folder

    @property
    def engine(self) -> NginxEngine:
        public = self.edge.gateway.public
        assert isinstance(public, NginxEdge)
        return public.engine

    async def send(self, path: str, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
        return await self.edge.send("GET", path, headers=headers)

    async def reaches(self, path: str) -> Seen:
        """``path`` answered 200 and seen by the upstream: what the upstream saw."""
        before = len(self.upstream.seen)
        answer = await self.send(path)
        assert answer.status == 200, (path, answer.status, answer.body, proxy_log(self.edge))
        (seen,) = self.upstream.seen[before:]
        assert seen.path == path
        return seen

    async def refused(self, path: str, status: int) -> None:
        before = len(self.upstream.seen)
        answer = await self.send(path)
        assert answer.status == status, (path, answer.status, answer.body, proxy_log(self.edge))
        assert self.upstream.seen[before:] == []

    async def reload(self, section: str) -> None:
        config = parse_config(CONFIG + section, source=str(self.root / "reloaded.yaml"))
        await self.edge.gateway.reload(config, self.root)


@contextlib.asynccontextmanager
async def lifecycle_stack(
    identity: RunningIdentityServer, root: Path, section: str = SECTION
) -> AsyncIterator[Stack]:
    upstream = Upstream([], asyncio.Event(), asyncio.Event())
    async with edge_stack(identity, root, section, upstream_app(upstream)) as edge:
        await forwarding(edge)
        upstream.seen.clear()
        try:
            yield Stack(edge, upstream, root)
        finally:
            upstream.release.set()


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, SECTION)


@pytest.fixture
async def stack(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[Stack]:
    async with lifecycle_stack(identity, short_tmp) as running:
        yield running


# -- nginx's processes, read from /proc ----------------------------------------------------


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the name (state first); None: no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != b"Z"


async def exited(pids: set[int]) -> None:
    """Until none of ``pids`` runs (a process killed dies once it is scheduled again)."""

    async def none_alive() -> bool:
        return not any(alive(pid) for pid in pids)

    await within(DEADLINE, none_alive, f"still running: {sorted(p for p in pids if alive(p))}")


def children(parent: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and int(fields[1]) == parent:
            found.add(int(entry))
    return {pid for pid in found if alive(pid)}


def masters(root: Path) -> set[int]:
    """Live nginx masters run on ``root`` (their command line names it)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if command[0].startswith(b"nginx: master") and str(root).encode() in b" ".join(command):
                found.add(int(entry))
    return {pid for pid in found if alive(pid)}


@dataclass(frozen=True)
class Processes:
    master: int
    workers: frozenset[int]

    def all(self) -> set[int]:
        return {self.master, *self.workers}


def processes(engine: NginxEngine) -> Processes:
    """nginx's master (its pid file) and its workers, now."""
    master = int((engine.config_file.parent / "nginx.pid").read_text())
    assert alive(master), f"nginx's master {master} does not run"
    return Processes(master, frozenset(children(master)))


def kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def crash(engine: NginxEngine) -> Processes:
    """nginx gone at once, master and workers (SIGKILL, the master first): what ran."""
    running = processes(engine)
    kill({running.master})
    kill(set(running.workers))
    return running


async def restarted(stack: Stack, previous: Processes) -> Processes:
    """Once a master other than ``previous`` runs with its workers and accepts: it."""
    engine = stack.engine

    async def serving() -> bool:
        try:
            now = processes(engine)
        except (OSError, ValueError, AssertionError):
            return False
        return (  # and the engine supervises it (a crash while it starts is another exit)
            now.master != previous.master
            and now.master == engine.master
            and len(now.workers) == 2
            and await accepts(engine.port)
        )

    try:
        await within(DEADLINE, serving, "nginx was not started again")
    except AssertionError as exc:  # what nginx said meanwhile, not before
        failed = engine.failed.is_set()
        raise AssertionError(f"{exc} (failed: {failed}): {proxy_log(stack.edge)}") from None
    return processes(engine)


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def files_read(engine: NginxEngine) -> dict[str, Path]:
    """The files the running configuration names, by directive."""
    text = engine.config_file.read_text()
    found = re.findall(r"^\s*((?:proxy_)?ssl_[a-z_]+) '([^']+)';", text, re.MULTILINE)
    return {directive: Path(path) for directive, path in found}


# -- 1. a reloaded declaration -------------------------------------------------------------


async def test_a_reloaded_declaration_serves_once_settled(stack: Stack) -> None:
    await stack.reaches("/old/a")
    await stack.refused("/new/a", 404)
    strict = await stack.send("/strict/a", (("X-Tenant", "t"), ("X-Other", "o")))
    assert strict.status == 200
    assert stack.upstream.seen[-1].headers.get("x-tenant") == "t"
    assert "x-other" not in stack.upstream.seen[-1].headers
    before = processes(stack.engine)

    await stack.reload(RELOADED)
    assert await stack.engine.settled(), proxy_log(stack.edge)

    assert processes(stack.engine).master == before.master  # reloaded, not restarted
    assert before.workers
    assert not any(alive(pid) for pid in before.workers)
    for attempt in range(4):  # each on its own connection: no worker of before answers
        await stack.reaches(f"/new/{attempt}")
        await stack.refused(f"/old/{attempt}", 404)
        answer = await stack.send("/strict/b", (("X-Tenant", "t"), ("X-Other", "o")))
        assert answer.status == 200, answer.body
        seen = stack.upstream.seen[-1]
        assert seen.path == "/strict/b"
        assert seen.headers.get("x-other") == "o"  # only nginx's configuration says so
        assert "x-tenant" not in seen.headers


# -- 2. a configuration nginx refuses ------------------------------------------------------


def refuse_plans_where(
    monkeypatch: pytest.MonkeyPatch, refused: str, *, to: str | None = None
) -> list[NginxPlan]:
    """The engine's render made to add a directive nginx does not know to any plan with a
    route on ``refused`` (sent ``to`` that service, where given): the plans it rendered."""
    render = nginx_engine.render
    rendered: list[NginxPlan] = []

    def broken(plan: NginxPlan) -> str:
        rendered.append(plan)
        text = render(plan)
        if any(r.path == refused and to in (None, r.to) for r in plan.gateway.routes):
            text += "tm_not_a_directive on;\n"
        return text

    monkeypatch.setattr(nginx_engine, "render", broken)
    return rendered


async def test_a_configuration_nginx_refuses_is_not_applied(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = stack.engine
    running_text = engine.config_file.read_text()
    before = processes(engine)
    rendered = refuse_plans_where(monkeypatch, "/new")

    with pytest.raises(ConfigError) as caught:
        await stack.reload(RELOADED)

    assert any(r.path == "/new" for p in rendered for r in p.gateway.routes)  # nginx -t ran
    assert "nginx refused" in caught.value.detail
    assert "tm_not_a_directive" in caught.value.detail  # nginx's reason, named
    assert engine.config_file.read_text() == running_text
    assert processes(engine) == before  # no reload, no restart
    assert await engine.settled(1.0)
    assert stack.edge.gateway.config is not None
    assert "/old" in [r.path for r in stack.edge.gateway.config.gateway.routes]  # type: ignore[union-attr]
    for attempt in range(3):
        await stack.reaches(f"/old/{attempt}")
        await stack.refused(f"/new/{attempt}", 404)
    strict = await stack.send("/strict/a", (("X-Tenant", "t"), ("X-Other", "o")))
    assert strict.status == 200
    assert stack.upstream.seen[-1].headers.get("x-tenant") == "t"
    assert "x-other" not in stack.upstream.seen[-1].headers


async def test_a_refused_declaration_naming_another_service_leaves_the_running_one(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = stack.engine
    running_text = engine.config_file.read_text()
    refuse_plans_where(monkeypatch, "/old", to="payments")
    assert "orders" not in RETARGETED

    with pytest.raises(ConfigError):
        await stack.reload(RETARGETED)
    await stack.reaches("/old/a")  # nginx still runs what it loaded

    # what nginx loads next (a restart here; a rotation or a discovery change alike) must
    # be the running declaration still
    await restarted(stack, crash(engine))
    await stack.reaches("/old/b")
    assert engine.config_file.read_text() == running_text


async def test_a_declaration_splitting_a_prefix_by_method_is_applied(stack: Stack) -> None:
    """Two routes on one prefix (other methods), reloaded in: nginx hands each request
    to the route the authorizer chose, and still forwards only what it allowed."""
    assert SPLIT != SECTION
    await stack.reload(SPLIT)
    assert await stack.engine.settled(), proxy_log(stack.edge)
    await stack.reaches("/old/b")
    before = len(stack.upstream.seen)
    posted = await stack.edge.send("POST", "/old/c", body=b"{}")
    assert posted.status == 200, (posted.body, proxy_log(stack.edge))
    assert [seen.path for seen in stack.upstream.seen[before:]] == ["/old/c"]
    deleted = await stack.edge.send("DELETE", "/old/d")
    assert deleted.status == 405, deleted.body
    assert deleted.header("allow") is not None
    assert len(stack.upstream.seen) == before + 1


# -- 3. supervision ------------------------------------------------------------------------


async def test_nginx_crashed_is_started_again_and_serves(stack: Stack) -> None:
    engine = stack.engine
    await stack.reaches("/old/a")

    gone = crash(engine)
    now = await restarted(stack, gone)

    await exited(set(gone.all()))
    assert not engine.failed.is_set()
    assert now.master in masters(engine.config_file.parent)
    for attempt in range(3):
        await stack.reaches(f"/old/{attempt}")
    await stack.reload(RELOADED)  # the nginx started again is the one the engine drives
    assert await engine.settled(), proxy_log(stack.edge)
    await stack.reaches("/new/a")


async def test_nginx_master_killed_is_replaced_by_an_nginx_of_its_own(stack: Stack) -> None:
    engine = stack.engine
    gone = processes(engine)
    try:
        kill({gone.master})

        async def replaced() -> bool:
            return not any(alive(pid) for pid in gone.workers) and bool(
                masters(engine.config_file.parent) - {gone.master}
            )

        await within(10.0, replaced, "the killed master's workers still run")
        now = await restarted(stack, gone)
        await stack.reload(RELOADED)
        assert await engine.settled(), proxy_log(stack.edge)
        await stack.reaches("/new/a")  # served by the nginx the engine drives
        assert not engine.failed.is_set()
        await engine.stop()
        await exited(set(now.all()))
    finally:
        kill(set(gone.workers))  # the orphans, where the engine left them


async def test_restarts_beyond_the_limit_fail_the_engine(stack: Stack) -> None:
    engine = stack.engine
    for _ in range(MAX_RESTARTS):
        await restarted(stack, crash(engine))
        assert not engine.failed.is_set()
    await stack.reaches("/old/a")  # the fifth nginx started again serves

    last = crash(engine)
    await asyncio.wait_for(engine.failed.wait(), DEADLINE)

    await exited(set(last.all()))
    assert masters(engine.config_file.parent) == set()  # and none started after it
    assert not await accepts(engine.port)


# -- 4. SVID rotation ----------------------------------------------------------------------


@pytest.fixture
def fast_identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    """SVIDs that live 10 seconds (renewed after about 4): rotations during the test."""
    fast = CONFIG.replace("identity: {svid_ttl: 1h}", "identity: {svid_ttl: 10s}")
    assert fast != CONFIG
    yield from identity_for(short_tmp, fast + SECTION, (GATEWAY,), discovery=True)


async def test_a_rotated_svid_is_what_nginx_presents_upstream(
    fast_identity: RunningIdentityServer, short_tmp: Path
) -> None:
    async with lifecycle_stack(fast_identity, short_tmp) as stack:
        engine = stack.engine
        svid_file = files_read(engine)["proxy_ssl_certificate"]
        first = await stack.reaches("/old/a")
        assert first.spiffe_id == GATEWAY
        serials = {c.serial_number for c in x509.load_pem_x509_certificates(svid_file.read_bytes())}
        assert first.serial in serials  # nginx presents the SVID of the file it reads
        newer: list[Seen] = []

        async def presents_a_new_one() -> bool:
            before = len(stack.upstream.seen)
            try:
                answer = await stack.send("/old/b")
            except (OSError, ssl.SSLError):
                return False
            seen = stack.upstream.seen[before:]
            if answer.status == 200 and seen and seen[0].serial != first.serial:
                newer.append(seen[0])
            return bool(newer)

        await within(DEADLINE, presents_a_new_one, "nginx still presents the first SVID")
        assert newer[0].spiffe_id == GATEWAY
        assert newer[0].serial not in serials  # not one the engine had written at first
        leaf = x509.load_pem_x509_certificates(svid_file.read_bytes())[0]
        assert leaf.serial_number != first.serial  # the file nginx reads holds the new one


async def test_a_rotated_svid_keeps_none_of_the_decisions_bound_to_the_old_one(
    fast_identity: RunningIdentityServer, short_tmp: Path
) -> None:
    """A kept decision carries an internal token bound to the certificate nginx presents:
    after a rotation it is dropped (a new configuration's cache), so the token the
    upstream gets is always bound to the certificate it sees."""
    kept = SECTION.replace("nginx: {workers: 2}", "nginx: {workers: 2, decision_ttl: 60s}")
    assert kept != SECTION
    async with lifecycle_stack(fast_identity, short_tmp, kept) as stack:
        first = await stack.reaches("/old/a")
        bound: list[tuple[int, bool]] = []

        async def rotated() -> bool:
            seen = await stack.reaches("/old/a")  # the same request: kept while it may be
            token = seen.headers["authorization"].removeprefix("Bearer ")
            claims = jwt.decode(token, options={"verify_signature": False})
            bound.append((seen.serial, claims["cnf"]["x5t#S256"] == seen.thumbprint))
            return seen.serial != first.serial

        await within(DEADLINE, rotated, "nginx still presents the first SVID")
        assert all(ok for _, ok in bound), bound


# -- 5. stop -------------------------------------------------------------------------------


async def test_stop_leaves_no_nginx_and_no_keys(stack: Stack) -> None:
    engine = stack.engine
    await stack.reload(RELOADED)  # workers retired by a reload too
    running = processes(engine)
    keys = {path.parent for path in files_read(engine).values()}
    (folder,) = keys
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.pem",
        "svid.key",
        "svid.pem",
        "tls.key",
        "tls.pem",
    ]
    assert folder.stat().st_mode & 0o777 == 0o700

    await engine.stop()

    await exited(set(running.all()))
    assert masters(engine.config_file.parent) == set()
    assert not folder.exists()
    assert not await accepts(engine.port)


async def test_stop_leaves_no_worker_behind_a_slow_request(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = stack.engine
    running = processes(engine)
    monkeypatch.setattr(nginx_engine, "STOP_SECONDS", 0.5)
    slow = asyncio.create_task(stack.send("/old/hold"))
    try:
        await asyncio.wait_for(stack.upstream.held.wait(), DEADLINE)
        await engine.stop()
        await exited(set(running.all()))
    finally:
        stack.upstream.release.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(slow, 10)
        kill({pid for pid in running.all() if alive(pid)})  # what the engine left


# -- 6. the process's drain ------------------------------------------------------------


@pytest.fixture
def own_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain of the test's own (the process's is every test's), taken after the identity
    service started and before the stack: the edge is tracked by it, the identity
    service's listeners are not."""
    monkeypatch.setattr(drain, "_drain", drain._Drain())


async def _unix_refuses(path: Path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return True
    writer.close()
    return False


async def _holding(stack: Stack) -> tuple[NginxEdge, Processes, asyncio.Task[Answer]]:
    """nginx's edge, its processes, and a request in progress (held by the upstream
    until ``stack.upstream.release`` is set)."""
    edge = stack.edge.gateway.public
    assert isinstance(edge, NginxEdge)
    running = processes(stack.engine)
    slow = asyncio.create_task(stack.send("/old/hold"))
    await asyncio.wait_for(stack.upstream.held.wait(), DEADLINE)
    return edge, running, slow


async def test_a_drain_quits_nginx_first_then_stops_its_authorizer(
    identity: RunningIdentityServer, own_drain: None, stack: Stack
) -> None:
    edge, running, slow = await _holding(stack)
    drain.configure(10.0)
    drain.begin()

    async def refused() -> bool:
        return not await accepts(stack.engine.port)

    await within(2.0, refused, "nginx still accepts connections after the drain began")
    assert not slow.done()
    assert not edge.authorizer.task.done()  # nginx may still ask it about this request
    stack.upstream.release.set()
    answer = await asyncio.wait_for(slow, DEADLINE)
    assert answer.status == 200  # the request in flight is answered
    await exited(set(running.all()))
    assert edge.draining is not None
    await asyncio.wait_for(edge.draining, DEADLINE)
    assert edge.authorizer.task.done()  # then the authorizer stopped
    assert await _unix_refuses(Path(str(edge.authorizer.server.config.uds)))
    assert "shutting-down" not in {e.reason.value for e in stack.edge.sink.events}


async def test_nginx_still_answering_at_the_drain_deadline_is_cut_and_recorded(
    identity: RunningIdentityServer, own_drain: None, stack: Stack
) -> None:
    edge, running, slow = await _holding(stack)
    try:
        drain.configure(1.0)
        began = time.monotonic()
        drain.begin()
        assert edge.draining is not None
        await asyncio.wait_for(edge.draining, DEADLINE)
        assert time.monotonic() - began < 5  # the deadline, not the request's 60 s
        await exited(set(running.all()))
        assert edge.authorizer.task.done()
    finally:
        stack.upstream.release.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(slow, 10)
    (cut,) = [e for e in stack.edge.sink.events if e.reason.value == "shutting-down"]
    assert cut.attributes["engine"] == "nginx"
