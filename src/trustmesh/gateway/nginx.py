"""``gateway.engine: nginx``: the gateway as nginx's control plane.

The gateway process runs nginx as its child and keeps it in step:

- **Configuration** rendered from the declaration (:mod:`trustmesh.gateway.nginxconf`),
  checked with ``nginx -t`` before nginx is started or reloaded: a configuration nginx
  refuses is never applied (the running one stays, and the error names nginx's reason).
- **Files:** the gateway's SVID, its key and the trust bundle, written again at every
  rotation, then nginx reloaded gracefully (``SIGHUP``: new workers with the new
  certificate, the old ones finish their requests). Private keys are written with mode
  0600 into a private folder, in memory (``/dev/shm``) where the machine has it, and
  removed when the gateway stops.
- **Upstreams** from discovery, looked up every :data:`REFRESH_SECONDS` (every second
  while a routed service has none yet); a change is rendered and reloaded. An instance
  whose SPIFFE ID is not its service's is never rendered. nginx checks each
  instance's certificate chain against the bundle and its name against the DNS SAN of
  the service's SPIFFE ID (:func:`trustmesh.crypto.svid_dns_name`).
- **Supervision:** nginx exiting on its own is logged and nginx started again (at most
  :data:`MAX_RESTARTS` times a minute; then the gateway stops, and ``trustmesh up``'s
  supervisor sees it). When the gateway stops, nginx is asked to finish (``SIGQUIT``),
  then killed after :data:`STOP_SECONDS`. nginx runs in a process group of its own, and
  whatever is left of it once its master has exited (workers outlive their master, and
  would serve on) is killed with the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from trustmesh import crypto, events
from trustmesh.config import TrustmeshConfig
from trustmesh.config.gateway import GatewayConfig
from trustmesh.config.listen import advertised_host
from trustmesh.errors import ConfigError, NotFoundError, TrustmeshError, UnavailableError
from trustmesh.gateway.app import GatewayApp
from trustmesh.gateway.authorizer import DEFAULT_PREFIX, Authorizer
from trustmesh.gateway.nginxconf import KEPT_LOG, NginxPlan, Upstream, render
from trustmesh.gateway.nginxlog import KeptLog
from trustmesh.platform.listeners import PublicServed, start_unix
from trustmesh.reasons import Reason
from trustmesh.sdk import drain
from trustmesh.sdk.discovery import Endpoint
from trustmesh.sdk.x509source import SVIDSource, X509Context

__all__ = [
    "MAX_RESTARTS",
    "REFRESH_SECONDS",
    "STOP_SECONDS",
    "NginxEdge",
    "NginxEngine",
    "start_nginx_edge",
]

log = logging.getLogger("trustmesh.gateway")

REFRESH_SECONDS: Final = 5.0
#: How often the upstreams are looked up while a routed service has no instance yet.
EARLY_REFRESH_SECONDS: Final = 1.0
MAX_RESTARTS: Final = 5
STOP_SECONDS: Final = 10.0
START_SECONDS: Final = 15.0


class Discovery(Protocol):
    async def lookup(self, service: str) -> list[Endpoint]: ...


class NginxEngine:
    """nginx serving the gateway's edge; :meth:`start` returns once it accepts."""

    def __init__(
        self,
        config: TrustmeshConfig,
        root: Path,
        source: SVIDSource,
        discovery: Discovery,
        *,
        certificate: crypto.ServerCertificate,
        authorizer: Path,
        authorizer_prefix: str,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        gateway = config.gateway
        if gateway is None:
            raise ConfigError("no gateway: section in the declaration")
        binary = shutil.which(gateway.nginx.binary)
        if binary is None:
            raise ConfigError(
                f"gateway.nginx.binary: {gateway.nginx.binary!r} is not an executable "
                "(engine: nginx needs nginx with the auth_request and headers-more modules: "
                "apt-get install nginx libnginx-mod-http-headers-more-filter)"
            )
        self._binary = binary
        self._config = config
        self._gateway = gateway
        self._root = root
        self._source = source
        self._discovery = discovery
        self._certificate = certificate
        self._authorizer = authorizer
        self._prefix = authorizer_prefix
        self._host = host
        self._port = port or _free_port(host)
        self._keys = _private_folder(root)
        self._upstreams: dict[str, tuple[str, ...]] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._restarts: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._retiring: set[int] = set()  # workers of a configuration replaced by a reload
        self._generation = 0  # of the rendered configuration: its cache of decisions
        self._served = 0  # the generation nginx was last started or reloaded with
        self.failed = asyncio.Event()  # set when nginx could not be kept running
        #: the pid of nginx's master once it serves, and while the engine supervises it
        self.master: int | None = None
        self._dns_names = {route.to: _dns_name(config, route.to) for route in gateway.routes}

    @property
    def port(self) -> int:
        return self._port

    @property
    def config_file(self) -> Path:
        return self._root / "nginx.conf"

    async def start(self) -> None:
        """Write the files, render and check the configuration, start nginx; return once
        it accepts connections (ConfigError: nginx refused the configuration;
        UnavailableError: it did not start)."""
        (self._root / "tmp").mkdir(parents=True, exist_ok=True)
        self._write_identity(self._source.context)
        self._write_certificate()
        await self._refresh_upstreams()
        await self._write_config()
        await self._spawn()
        self._source.subscribe(self._rotated)
        self._spawn_task(self._watch_upstreams(), "trustmesh-nginx-upstreams")

    async def apply(
        self, gateway: GatewayConfig, *, before_reload: Callable[[], None] | None = None
    ) -> None:
        """A reloaded declaration: rendered, checked and applied (ConfigError: nginx refused
        it and the running configuration stays); ``before_reload`` is called once nginx has
        accepted it, right before nginx is told to load it."""
        async with self._lock:
            previous, names = self._gateway, self._dns_names
            self._gateway = gateway
            self._dns_names = {r.to: _dns_name(self._config, r.to) for r in gateway.routes}
            try:
                await self._write_config()
            except ConfigError:
                self._gateway, self._dns_names = previous, names
                await self._write_config()
                raise
            if before_reload is not None:
                before_reload()
            self._reload()

    async def stop(self, seconds: float | None = None) -> bool:
        """nginx asked to finish (``SIGQUIT``: it stops accepting at once, and ends once
        the requests in progress are answered), killed with its group after ``seconds``
        (:data:`STOP_SECONDS` by default); its keys removed. True when it finished in
        time (or had stopped already)."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        process, finished = self._process, True
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGQUIT)  # finish the requests in progress
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS if seconds is None else seconds)
            except TimeoutError:
                finished = False
                _kill_group(process.pid)  # the master and every worker still finishing
                await process.wait()
        if process is not None:
            _kill_group(process.pid)
        shutil.rmtree(self._keys, ignore_errors=True)
        return finished

    # -- files -------------------------------------------------------------------------

    def _write_identity(self, context: X509Context) -> None:
        _write_private(self._keys / "svid.key", crypto.private_key_to_pem(context.key))
        _write_file(self._keys / "svid.pem", context.chain_pem())
        _write_file(self._keys / "bundle.pem", context.bundle_pem())

    def _write_certificate(self) -> None:
        _write_file(self._keys / "tls.pem", self._certificate.chain_pem())
        _write_private(self._keys / "tls.key", self._certificate.key_pem())

    def _plan(self) -> NginxPlan:
        upstreams = [
            Upstream(service, self._upstreams.get(service, ()), dns_name)
            for service, dns_name in self._dns_names.items()
        ]
        return NginxPlan(
            gateway=self._gateway,
            root=self._root,
            port=self._port,
            host=self._host,
            tls_cert=self._keys / "tls.pem",
            tls_key=self._keys / "tls.key",
            svid_cert=self._keys / "svid.pem",
            svid_key=self._keys / "svid.key",
            bundle=self._keys / "bundle.pem",
            kept=self._keys / f"kept-{self._generation}",
            generation=self._generation,
            authorizer=self._authorizer,
            authorizer_prefix=self._prefix,
            upstreams=upstreams,
            user=_worker_user(),
        )

    async def _write_config(self) -> None:
        """Render into a candidate file, let ``nginx -t`` check it, then put it in place."""
        candidate = self._root / "nginx.conf.new"
        self._generation += 1
        candidate.write_text(render(self._plan()))
        process = await asyncio.create_subprocess_exec(
            *self._command(candidate),
            "-t",
            "-q",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise ConfigError(
                "nginx refused the rendered configuration: "
                + err.decode("utf-8", "replace").strip()[-2000:]
            )
        candidate.replace(self.config_file)

    def _command(self, config_file: Path) -> list[str]:
        return [
            self._binary,
            "-p",
            str(self._root),
            "-c",
            str(config_file),
            "-e",
            str(self._root / "error.log"),
        ]

    # -- the process -------------------------------------------------------------------

    async def _spawn(self) -> None:
        self._served = self._generation
        self._process = await asyncio.create_subprocess_exec(
            *self._command(self.config_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: its workers die with it
        )
        deadline = time.monotonic() + START_SECONDS
        while not await _accepts(advertised_host(self._host), self._port):  # not 0.0.0.0
            if self._process.returncode is not None or time.monotonic() > deadline:
                _kill_group(self._process.pid)
                raise UnavailableError("nginx did not start: " + self.error_log_tail())
            await asyncio.sleep(0.05)
        log.info("gateway: nginx serves on %s:%d", self._host, self._port)
        self.master = self._process.pid
        self._spawn_task(self._supervise(self._process), "trustmesh-nginx-supervise")

    async def _supervise(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self.master = None
        _kill_group(process.pid)  # workers outlive their master: they would serve on
        why = f"nginx exited ({code}): {self.error_log_tail()}"
        while not self._stopping:  # a start that fails counts as one more exit
            log.error("gateway: %s", why)
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < 60.0] + [now]
            if len(self._restarts) > MAX_RESTARTS:
                log.error("gateway: nginx exited %d times in a minute; giving up", MAX_RESTARTS)
                self.failed.set()
                return
            await asyncio.sleep(min(2.0 ** (len(self._restarts) - 1) * 0.1, 5.0))
            try:
                await self._spawn()
            except TrustmeshError as exc:
                why = f"nginx could not be started again: {exc.detail}"
            else:
                return

    def signal(self, signum: int) -> None:
        """Send nginx's master ``signum`` (where it runs)."""
        self._signal(signum)

    def _signal(self, signum: int) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def _reload(self) -> None:
        """A graceful reload: nginx starts workers with the new configuration and retires
        the ones it runs now (they finish their requests, but may still accept a connection
        until the master has started the new ones; :meth:`settled` waits them out)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._retiring |= _children(process.pid)
        self._signal(signal.SIGHUP)
        # the decisions of the configurations before the one retired now
        keep = {f"kept-{self._generation}", f"kept-{self._served}"}
        for folder in self._keys.glob("kept-*"):
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)
        self._served = self._generation

    async def settled(self, timeout: float = STOP_SECONDS) -> bool:
        """True once every worker retired by a reload has exited, so that only the
        configuration applied last serves; False if some still run after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self._retiring = {pid for pid in self._retiring if _alive(pid)}
            if not self._retiring:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)

    def error_log_tail(self) -> str:
        """The end of nginx's error log (what a failure reports)."""
        try:
            return (self._root / "error.log").read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no error log)"

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- rotation and discovery ----------------------------------------------------------

    def _rotated(self, context: X509Context) -> None:
        if self._stopping:
            return
        self._spawn_task(self._reload_identity(context), "trustmesh-nginx-rotate")

    async def _reload_identity(self, context: X509Context) -> None:
        async with self._lock:
            self._write_identity(context)
            try:  # a new generation: the decisions kept hold tokens bound to the old SVID
                await self._write_config()
            except ConfigError as exc:
                log.error("gateway: the rotated SVID's configuration refused: %s", exc.detail)
            self._reload()
            log.info("gateway: nginx reloaded with the rotated SVID")

    async def _watch_upstreams(self) -> None:
        while True:
            missing = any(not self._upstreams.get(s) for s in self._dns_names)
            await asyncio.sleep(EARLY_REFRESH_SECONDS if missing else REFRESH_SECONDS)
            before = dict(self._upstreams)
            await self._refresh_upstreams()
            if self._upstreams != before:
                async with self._lock:
                    try:
                        await self._write_config()
                    except ConfigError as exc:
                        log.error("gateway: upstream change not applied: %s", exc.detail)
                        self._upstreams = before
                        continue
                    self._reload()
                    log.info("gateway: nginx reloaded with the upstreams %s", self._upstreams)

    async def _refresh_upstreams(self) -> None:
        """Each routed service's instances from discovery (the last answer kept while
        discovery fails); only instances that hold the service's own SPIFFE ID."""
        for service in self._dns_names:
            try:
                endpoints = await self._discovery.lookup(service)
            except (NotFoundError, UnavailableError, OSError) as exc:
                log.debug("gateway: discovery lookup of %s failed: %s", service, exc)
                continue
            expected = self._config.spiffe_id(service)
            self._upstreams[service] = tuple(
                sorted(
                    address
                    for e in endpoints
                    if e.spiffe_id == expected and (address := _address(e.url)) is not None
                )
            )


@dataclass(eq=False)
class NginxEdge:
    """The edge as ``engine: nginx`` serves it: nginx, the authorizer it asks, and where
    nginx keeps decisions, the reader of its record of what it answered itself.

    Drained with the process's listeners (:mod:`trustmesh.sdk.drain`), in its own
    order: nginx first (it stops accepting at once and answers the requests in
    progress, each of which may still ask the authorizer), then, once nginx has exited
    or been killed at the deadline, the authorizer."""

    engine: NginxEngine
    authorizer: PublicServed
    kept: KeptLog | None = None
    reading: asyncio.Task[None] | None = None
    current: Callable[[], GatewayApp] | None = None
    draining: asyncio.Task[None] | None = None

    def begin_drain(self, seconds: float) -> None:
        if self.draining is None:
            self.draining = asyncio.get_running_loop().create_task(
                self._drain(seconds), name="trustmesh-nginx-drain"
            )

    async def _drain(self, seconds: float) -> None:
        if not await self.engine.stop(seconds) and self.current is not None:
            self.current().record(
                events.Decision.ERROR,
                Reason.SHUTTING_DOWN,
                "nginx was still answering at the drain deadline: its connections were cut",
                engine="nginx",
            )
        await self.authorizer.stop()

    @property
    def port(self) -> int:
        return self.engine.port

    @property
    def failed(self) -> asyncio.Event:
        return self.engine.failed

    async def stop(self) -> None:
        if self.draining is not None:
            with contextlib.suppress(Exception):
                await self.draining
        await self.engine.stop()
        if self.reading is not None:  # read to the end: nginx has flushed and stopped
            self.reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reading
        await self.authorizer.stop()

    def reopen(self) -> None:
        """nginx opens its logs again (the kept.log renamed)."""
        self.engine.signal(signal.SIGUSR1)


async def start_nginx_edge(
    config: TrustmeshConfig,
    root: Path,
    source: SVIDSource,
    discovery: Discovery,
    current: Callable[[], GatewayApp],
    *,
    certificate: crypto.ServerCertificate,
    port: int = 0,
    host: str = "127.0.0.1",
) -> NginxEdge:
    """The authorizer on a private unix socket under ``root``, then nginx asking it."""
    socket_path = _private_root(root) / "authz.sock"
    authorizer = await start_unix(  # drained after nginx (NginxEdge), not beside it
        Authorizer(current, prefix=DEFAULT_PREFIX, client_from=b"x-original-client"),
        socket_path,
        drained=False,
    )
    engine = NginxEngine(
        config,
        root,
        source,
        discovery,
        certificate=certificate,
        authorizer=socket_path,
        authorizer_prefix=DEFAULT_PREFIX,
        port=port,
        host=host,
    )
    try:
        await engine.start()
    except BaseException:
        await engine.stop()
        await authorizer.stop()
        raise
    edge = NginxEdge(engine, authorizer, current=current)
    drain.track(edge)
    if config.gateway is not None and config.gateway.nginx.decision_ttl is not None:
        edge.kept = KeptLog(root / KEPT_LOG, lambda line: current().record_kept(line), edge.reopen)
        edge.reading = asyncio.create_task(edge.kept.run(), name="trustmesh-nginx-kept-log")
    return edge


def _dns_name(config: TrustmeshConfig, service: str) -> str:
    name = crypto.svid_dns_name(config.spiffe_id(service))
    if name is None:
        raise ConfigError(
            f"service {service!r}: its SPIFFE ID has no DNS form, so nginx cannot check "
            "the certificate of its instances (use lower-case letters, digits and hyphens)"
        )
    return name


def _address(url: str) -> str | None:
    """``host:port`` of an ``https://host:port`` endpoint (None: not one)."""
    if not url.startswith("https://"):
        return None
    rest = url[len("https://") :].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or "/" in rest or any(c in rest for c in " ;{}'\"\\"):
        return None
    return f"{host}:{port}"


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _private_root(root: Path) -> Path:
    """``root``, made (0700) where it is not."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    return root


def _private_folder(root: Path) -> Path:
    """A fresh 0700 folder for the keys nginx reads: in memory where the machine has
    ``/dev/shm``, else under ``root``."""
    shm = Path("/dev/shm")  # noqa: S108 - a private 0700 folder of our own, made below  # nosec B108 # only the parent of a fresh 0700 mkdtemp folder
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else root
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"trustmesh-nginx-{secrets.token_hex(4)}-", dir=parent))


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def _write_file(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".new")
    temporary.write_bytes(data)
    temporary.replace(path)


def _worker_user() -> str | None:
    """The user nginx's workers run as: this process's own, named where nginx starts as
    root (it would otherwise switch them to ``nobody``, who can read none of the files)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(os.geteuid()).pw_name


def _processes() -> Iterator[tuple[int, list[bytes]]]:
    """Each running process and the fields of its ``/proc/<pid>/stat`` after its name
    (state, parent, process group, …); none where /proc is not there."""
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_bytes()
            except OSError:
                continue  # exited while we looked
            yield int(entry.name), stat[stat.rfind(b")") + 2 :].split()  # a name has spaces


def _children(parent: int) -> set[int]:
    """The processes whose parent is ``parent`` (nginx's workers)."""
    return {pid for pid, fields in _processes() if len(fields) > 1 and int(fields[1]) == parent}


def _kill_group(leader: int) -> None:
    """SIGKILL every process left in the group nginx's master ``leader`` led (its
    workers, its cache processes), where one is left: a group no process is in any more
    could have its number taken by another's."""
    if not _group_members(leader):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)


def _group_members(group: int) -> set[int]:
    """The running processes of process group ``group``."""
    return {
        pid
        for pid, fields in _processes()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group
    }


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a retired worker that exited is reaped by its master)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
