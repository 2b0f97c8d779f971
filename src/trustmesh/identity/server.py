"""Assembly of the identity service: state directory, CA, store, Workload API socket."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from grpclib.health.service import Health
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import crypto, events
from trustmesh.config import TrustmeshConfig
from trustmesh.errors import StateError
from trustmesh.identity import admin
from trustmesh.identity.admin import ServiceSettings, utcnow
from trustmesh.identity.admin_app import AdminTokens, IdentityAdmin
from trustmesh.identity.attestation import boot_id
from trustmesh.identity.ca import CASettings, CertificateAuthority
from trustmesh.identity.discovery import Registry
from trustmesh.identity.discovery_app import SuspensionFeed, discovery_app
from trustmesh.identity.endpoint import MAX_SOCKET_PATH as MAX_SOCKET_PATH
from trustmesh.identity.endpoint import IdentityPaths as IdentityPaths
from trustmesh.identity.endpoint import prepare_state_dir
from trustmesh.identity.metrics import IdentityFacts, Reporter, Tally, WorkerReports, registry
from trustmesh.identity.models import IssuedSVID
from trustmesh.identity.operator import OPERATOR_TOKEN_TTL, OperatorSocket
from trustmesh.identity.selfsvid import CASource
from trustmesh.identity.service import Clock, IdentityService
from trustmesh.identity.store import SqliteIdentityStore
from trustmesh.identity.workload import ChangeFeed, GuardedServer, WorkloadAPI
from trustmesh.platform.admin import Actor
from trustmesh.platform.endpoints import peer_url
from trustmesh.platform.listeners import PublicServed, Served, start_loopback
from trustmesh.platform.listeners import start as serve_start
from trustmesh.platform.metrics import serve_metrics
from trustmesh.reasons import Reason
from trustmesh.sdk import drain
from trustmesh.sdk.delivery import AuditSink, audit_sink

log = logging.getLogger("trustmesh.identity")


def _checked_paths(state_dir: Path) -> IdentityPaths:
    paths = IdentityPaths(state_dir.absolute())
    too_long = paths.socket_too_long()
    if too_long is not None:
        raise StateError(
            f"socket path {too_long} is longer than {MAX_SOCKET_PATH} bytes; "
            "choose a shorter --state directory"
        )
    return paths


def service_settings(config: TrustmeshConfig) -> ServiceSettings:
    ident = config.identity
    return ServiceSettings(
        trust_domain=config.trust_domain,
        svid_ttl=ident.svid_ttl,
        max_svid_ttl=ident.max_svid_ttl,
        jwt_svid_ttl=ident.jwt_svid_ttl,
    )


def ca_settings(config: TrustmeshConfig, publish_delay: dt.timedelta | None = None) -> CASettings:
    ident = config.identity
    return CASettings(
        trust_domain=config.trust_domain,
        root_ttl=ident.root_ttl,
        ca_ttl=ident.ca_ttl,
        max_svid_ttl=ident.max_svid_ttl,
        publish_delay=publish_delay or min(dt.timedelta(minutes=5), ident.max_svid_ttl),
    )


class IdentityServer:
    """The running identity service. ``start()`` binds the socket; ``close()`` stops.

    The *leader* holds the state lock, rotates the CA and, when ``worker_argv`` is given,
    starts ``workers - 1`` worker processes that accept on the same listening socket
    (handed to them as an inherited file descriptor). A worker (``listen_fd`` given) is a
    follower: it signs with the CA the leader stored and reloads it when it changes.

    With ``metrics``, the leader serves Prometheus metrics on loopback, its workers'
    counts included: each reports its own on a pipe (``report_fd``; see
    :mod:`trustmesh.identity.metrics`).
    """

    def __init__(
        self,
        config: TrustmeshConfig,
        state_dir: Path,
        *,
        clock: Clock = utcnow,
        tick_interval: float = 1.0,
        publish_delay: dt.timedelta | None = None,
        sink: events.EventSink | None = None,
        listen_fd: int | None = None,
        worker_argv: list[str] | None = None,
        discovery: bool = False,
        locate_auth: Callable[[], str | None] | None = None,
        deliver: bool = False,
        metrics: bool = False,
        report_fd: int | None = None,
        worker_slot: int | None = None,
    ) -> None:
        self.config, self.clock = config, clock
        self._slot = worker_slot  # a worker's place (1..workers-1), kept by its successor
        self._slot_of: dict[int, int] = {}  # a worker's pid: its slot
        self.paths = _checked_paths(state_dir)
        self.follower = listen_fd is not None
        self._listen_fd, self._worker_argv = listen_fd, worker_argv
        self._workers: list[subprocess.Popen[bytes]] = []
        self._lock_fd = None if self.follower else self._take_state()
        seal_key = crypto.load_seal_key(self.paths.root, dev=config.dev)
        if seal_key.warning and not self.follower:
            print(f"WARNING: {seal_key.warning}", file=sys.stderr, flush=True)
        self._file_sink = events.JsonLinesSink(self.paths.events)
        self._fanout = events.FanoutSink(self._file_sink, *([sink] if sink else []))
        self.tally = Tally(self._fanout)  # every event counted (a worker reports its counts)
        self.sink: events.EventSink = self.tally
        self.reports = WorkerReports()
        self._reporter = Reporter(report_fd, self.tally) if report_fd is not None else None
        self._metrics_wanted = metrics and not self.follower
        self.metrics: PublicServed | None = None
        self.store = SqliteIdentityStore(self.paths.db)
        self.ca, self.service = self._issuer(seal_key, publish_delay)
        self.feed = ChangeFeed()
        self.api = WorkloadAPI(self.service, self.feed)
        self._server = GuardedServer([self.api, Health()], self.api.guard)
        self._listener: socket.socket | None = None
        self._discovery_enabled = discovery and not self.follower
        self.registry = Registry(config)
        ttl = min(config.identity.svid_ttl, config.identity.max_svid_ttl)
        self.self_svid = CASource(self.ca, config.component_spiffe_id("identity"), ttl, clock)
        self._audit = self._delivery() if deliver else None
        self.discovery: Served | None = None
        self.operator: OperatorSocket | None = None
        self.admin_tokens = AdminTokens(
            config,
            lambda: self.discovery.tls if self.discovery else None,
            locate_auth or self._auth_url,
        )
        self._tick_interval = tick_interval
        self._ticker: asyncio.Task[None] | None = None

    def _take_state(self) -> int:
        """The leader's: the state directory made private, and its lock held (the
        lock's file descriptor)."""
        prepare_state_dir(self.paths.root)
        return _lock(self.paths.lock)

    def _delivery(self) -> AuditSink | None:
        """Delivery to the audit collector, where the declaration has one: the identity
        service starts first, so its events spool until the collector is found (its
        variable or its endpoint file). Each process delivers what it records: the leader through
        ``spool/identity``, a worker through its slot's (``spool/identity-worker-<n>``),
        which the worker that replaces it takes over — so nothing a crashed worker
        spooled is left behind."""
        if self.config.audit is None or (self.follower and self._slot is None):
            return None
        name = "identity" if self._slot is None else f"identity-worker-{self._slot}"
        # TRUSTMESH_AUDIT_URL where set (a pod: the collector's Service), until the
        # collector's endpoint file says otherwise; the collector's SPIFFE ID is checked
        url = peer_url(self.paths.root, "audit") or ""
        audit = audit_sink(self.self_svid, self.config, self.paths.root, name, url=url)
        self._fanout.sinks = (*self._fanout.sinks, audit)
        self.api.recorded = audit.spooled  # no SVID handed over before its issuance is spooled
        return audit

    def _issuer(
        self, seal_key: crypto.SealKey, publish_delay: dt.timedelta | None
    ) -> tuple[CertificateAuthority, IdentityService]:
        """The CA (loaded; a follower's signs with what the leader stored) and the service
        that issues with it (a leader forgets bindings from before the last boot)."""
        settings = ca_settings(self.config, publish_delay)
        ca = CertificateAuthority(settings, self.store, seal_key, follower=self.follower)
        ca.load(self.clock())
        service = IdentityService(
            service_settings(self.config), self.store, ca, self.sink, clock=self.clock
        )
        if not self.follower:
            self.store.reset_bindings_after_boot(boot_id())
            service.prune_bindings()
        return ca, service

    async def start(self) -> None:
        _raise_fd_limit()
        if not self.follower:  # a snapshot left by a crash names a server that is gone,
            # and the instances still leased there
            self._restore_instances()
            self.paths.discovery.unlink(missing_ok=True)
        if self._listen_fd is not None:
            self._listener = socket.socket(fileno=self._listen_fd)
        else:
            _remove_stale_socket(self.paths.socket)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(self.paths.socket))
            # Any local process may connect; attestation decides what it gets (as SPIRE's
            # agent socket). Who can reach the socket at all is the state directory's mode.
            self.paths.socket.chmod(0o777)
            self._listener.listen(512)
        self._listener.setblocking(False)
        await self._server.start(sock=self._listener)
        if self._worker_argv is not None:
            for slot in range(1, worker_count(self.config)):
                self._spawn_worker(slot)
        if self._metrics_wanted:
            await self._serve_metrics()
        if self._discovery_enabled:
            await self._serve_discovery()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def _serve_metrics(self) -> None:
        """The leader's metrics, its workers' counts included, on loopback."""
        facts = IdentityFacts(self.tally, self.reports, self.ca, self.clock)
        render = registry(facts, self.self_svid, self._audit)
        self.metrics = await start_loopback(serve_metrics(render))

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics.port}/metrics" if self.metrics else None

    async def _serve_discovery(self) -> None:
        """Discovery, the suspensions feed, the admin API and the health check on the mTLS
        listener (on ``listen.host``: the services of other machines or pods register and
        look up there); the operator's socket; then the snapshot that says where they are."""
        routes = IdentityAdmin(
            self.config,
            self.store,
            service_settings(self.config),
            self.sink,
            self.admin_tokens,
            self._entries_changed,
            self._last_svid,
            self.ca,
            clock=self.clock,
        ).routes()
        feed = SuspensionFeed(self.store, self.clock).routes()
        self.discovery = await serve_start(
            discovery_app(
                self.registry,
                self.sink,
                self.clock,
                [*feed, *routes, Route("/healthz", self._health, methods=["GET"])],
                suspended=self.service.suspended,
            ),
            source=self.self_svid,
            host=self.config.listen.host,
            port=self.config.identity.discovery_port,
        )
        _remove_stale_socket(self.paths.operator_socket)
        self.operator = OperatorSocket(
            self.paths.operator_socket,
            self.config.component_spiffe_id("operator"),
            self._operator_token,
            self.sink,
            self.clock,
        )
        await self.operator.start()
        self._write_discovery_file()

    def _operator_token(self, now: dt.datetime) -> str:
        return admin.create_join_token(
            self.store,
            service_settings(self.config),
            self.config.component_spiffe_id("operator"),
            OPERATOR_TOKEN_TTL,
            self.sink,
            now=now,
            actor=Actor(None),
        )

    def _last_svid(self, spiffe_id: str) -> IssuedSVID | None:
        self.service.flush_issued()  # what was issued a moment ago counts
        return self.store.last_svid(spiffe_id)

    async def _health(self, _: Request) -> Response:
        """For any workload of the trust domain (the listener checked its SVID): up, and
        until when the signing CA signs (public: it is in every SVID's chain)."""
        try:
            expires = self.ca.active.signing.not_valid_after_utc
        except StateError:
            return JSONResponse({"status": "no-signing-ca"}, status_code=503)
        return JSONResponse({"status": "ok", "signing_ca_expires": expires.isoformat()})

    def _entries_changed(self) -> None:
        if self.service.refresh_entries(written=True):
            self.feed.bump()  # streams re-send (or stop) at once

    def _auth_url(self) -> str | None:
        """The provider's mTLS URL (``TRUSTMESH_AUTH_URL``, else its endpoint file)."""
        return peer_url(self.paths.root, "auth")

    def _spawn_worker(self, slot: int) -> None:
        if self._listener is None or self._worker_argv is None:
            raise StateError("workers are started by a listening leader")
        fd = self._listener.fileno()
        read_end, write_end = self.reports.pipe()  # where the worker reports its counts
        given = ["--worker-fd", str(fd), "--report-fd", str(write_end), "--worker-slot", str(slot)]
        try:
            worker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [*self._worker_argv, *given],
                pass_fds=(fd, write_end),
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._workers.append(worker)
        self._slot_of[worker.pid] = slot
        self.reports.add(worker.pid, read_end)

    @property
    def discovery_url(self) -> str | None:
        """Where discovery is reached (a wildcard bind: on loopback)."""
        return self.config.listen.url(self.discovery.port) if self.discovery else None

    def _restore_instances(self) -> None:
        """The leases the last run of this service granted, from its snapshot."""
        try:
            doc = json.loads(self.paths.discovery.read_text())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict):
            self.registry.restore(doc.get("instances"), self.clock())

    def _write_discovery_file(self) -> None:
        """What `trustmesh status` reads: the discovery URL and the live instances."""
        now = self.clock()
        self.registry.expire(now, grace=self.registry.lease * 4)  # stale ones are shown a while
        doc = {
            "url": self.discovery_url,
            "spiffe_id": self.self_svid.spiffe_id,
            "cert_expires": self.self_svid.context.not_after.isoformat(),
            "metrics_url": self.metrics_url,
            "updated_at": now.isoformat(),
            "instances": self.registry.snapshot(now),
        }
        tmp = self.paths.discovery.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.paths.discovery)

    def _keep_instances_only(self) -> None:
        """At a stop, the snapshot keeps only the leases (for the next start), no URL:
        nothing listens there any more."""
        doc = {
            "instances": self.registry.snapshot(self.clock()),
            "stopped_url": self.discovery_url,  # where a restart listens again
        }
        tmp = self.paths.discovery.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.paths.discovery)

    def tick(self) -> None:
        if self.service.tick():
            self.service.report_ca_actions(self.ca.last_actions)
            self.feed.bump()
        if self._discovery_enabled:
            self.self_svid.refresh()
            self._write_discovery_file()
        if self._reporter is not None:
            self._reporter.report()
        for worker in list(self._workers):
            if worker.poll() is not None:  # a crashed worker is replaced
                print(
                    f"identity: worker {worker.pid} exited ({worker.returncode}); restarting",
                    file=sys.stderr,
                    flush=True,
                )
                self._workers.remove(worker)
                self.reports.retire(worker.pid)  # what it counted stays counted
                self._spawn_worker(self._slot_of.pop(worker.pid))  # and what it spooled

    def rotate_ca(self) -> None:
        """Prepare the next CA now (published at once, signing after the publish delay)."""
        self.ca.force_rotation(self.clock())
        self.service.report_ca_actions(self.ca.last_actions)
        self.feed.bump()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            try:
                self.tick()
            except Exception:  # the store, the disk: said, and the next tick tries again
                log.exception("identity: the periodic tick failed")

    async def drain(self) -> int:
        """The service's part of a stop (SIGTERM): every listener stops accepting at once
        (the Workload API's socket, and the discovery, admin and metrics listeners:
        :mod:`trustmesh.sdk.drain`), the workers are told to drain too, every Workload API
        stream ends (``UNAVAILABLE``: a workload keeps its SVIDs and asks again, as it does
        when the service is gone), and the calls in flight get ``listen.drain`` seconds to
        be answered. The number of calls still running then: :meth:`close` cuts them,
        each recorded."""
        deadline = time.monotonic() + drain.begin()
        for worker in self._workers:
            worker.terminate()
        self.api.close_streams()
        left = await self._server.drain(deadline)
        for _ in range(left):
            self.service.recorder.record(
                Reason.SHUTTING_DOWN,
                "Workload API call cut at the drain deadline",
                attributes={"answer": "cancelled"},
            )
        return left

    async def close(self) -> None:
        self.service.flush_issued()
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.admin_tokens.close()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.operator is not None:
            await self.operator.close()
        if self.discovery is not None:
            await self.discovery.stop()
            self._keep_instances_only()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.terminate()
        self._server.close()
        await self._server.wait_closed()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.reports.close()
        if self._reporter is not None:
            self._reporter.close()
        if not self.follower:
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
        self.store.close()
        if self._audit is not None:  # the collector stops first: the rest stays spooled
            await asyncio.to_thread(self._audit.close, 1.0)
        self._file_sink.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)


def _raise_fd_limit() -> None:
    """Use every file descriptor the hard limit allows: with many workloads connected, a
    soft limit of 1,024 is reached long before the connection guard's caps."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_count(config: TrustmeshConfig) -> int:
    """Processes serving the Workload API: configured, or one per core (at most 8)."""
    return config.identity.workers or min(os.cpu_count() or 1, 8)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateError(f"another identity service holds {path}") from None
    return fd


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a crash is removed; a live one means another server runs."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise StateError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StateError(f"another server is listening on {path}")


async def serve_until_signalled(
    config: TrustmeshConfig,
    state_dir: Path,
    *,
    config_path: Path | None = None,
    worker_fd: int | None = None,
    report_fd: int | None = None,
    worker_slot: int | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain (:meth:`IdentityServer.drain`) and stop: the
    process entry point used by ``trustmesh up``. Paths are absolute (workers are
    started with them)."""
    import signal

    worker_argv = None
    if worker_fd is None and config_path is not None:
        worker_argv = [
            sys.executable,
            "-m",
            "trustmesh.identity",
            "--config",
            str(config_path),
            "--state",
            str(state_dir),
        ]
    server = IdentityServer(
        config,
        state_dir,
        listen_fd=worker_fd,
        worker_argv=worker_argv,
        discovery=worker_fd is None,
        deliver=True,
        metrics=worker_fd is None,
        report_fd=report_fd,
        worker_slot=worker_slot,
    )
    drain.configure(config.listen.drain.total_seconds())
    await server.start()
    drain.on_cut(drain.record_cuts(server.service.recorder))  # a discovery or admin call
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker_fd is None:
        print(f"identity: Workload API on {server.paths.socket_address}", flush=True)
        print(f"identity: Prometheus metrics at {server.metrics_url}", flush=True)
    try:
        await stop.wait()
        await server.drain()
    finally:
        await server.close()
