"""What the gateway's fault tests drive a running gateway with, besides the gateway rigs
(``tests/gateway``: :mod:`liverig`, :mod:`edgerig`, put on ``sys.path`` here):

* :class:`Load` — clients that keep requests running concurrently over keep-alive TLS
  connections while a test breaks something, each answer noted with when it started,
  how long it took and what it said; :func:`loaded_edge`, a gateway with such a load on
  it;
* :class:`UpstreamProcess` — an instance of a service in a process of its own (its SVID
  from the Workload API, registered in discovery), which a test kills with SIGKILL: its
  sockets die with it, as a crashed instance's do;
* :func:`remote_clients` — a process of its own whose connections send what no
  well-behaved client would: a request a byte at a time, then silence (:func:`trickle`),
  an oversized head;
* :class:`Flood` — a process of its own that opens thousands of plain TCP connections to
  the gateway's public port and holds them without a byte;
* :func:`rss_bytes` — this process's resident memory (the gateway runs in it), and
  :class:`Peaks`, the highest such gauges reached while something happens.

Run as a script, this module is one of those child processes (``upstream``,
``clients`` or ``flood``); it imports only what the child needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trustmesh

if TYPE_CHECKING:  # not imported by the child processes
    from trustmesh.testing import RunningIdentityServer

HERE = Path(__file__).resolve().parent
for _folder in ("auth", "gateway"):  # authrig, liverig, edgerig: the gateway's rigs
    if str(HERE.parent / _folder) not in sys.path:
        sys.path.insert(0, str(HERE.parent / _folder))

#: Where a child finds trustmesh: the sources this process imported it from.
_SRC = str(Path(trustmesh.__file__).resolve().parents[1])


def rss_bytes() -> int:
    """This process's resident set size (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Peaks:
    """The highest values ``gauges`` took, sampled every 10 ms while :meth:`sampling`."""

    gauges: dict[str, Callable[[], int]]
    highest: dict[str, int] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[Peaks]:
        async def sample() -> None:
            while True:
                for name, gauge in self.gauges.items():
                    self.highest[name] = max(self.highest.get(name, 0), gauge())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(sample())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    """One request of a :class:`Load` and its answer (``status`` 0: no answer at all)."""

    worker: int
    method: str
    path: str
    started: float  # time.monotonic()
    took: float
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.took

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def remaining(self) -> int | None:
        """``r`` of the ``RateLimit`` header (draft-ietf-httpapi-ratelimit-headers §4)."""
        value = self.headers.get("ratelimit")
        if value is None:
            return None
        params = dict(p.split("=", 1) for p in value.split(";")[1:] if "=" in p)
        return int(params["r"])


def client_session(cafile: Path, connections: int, *, fresh: bool = False) -> Any:
    """An aiohttp session trusting the gateway's edge CA, keeping up to ``connections``
    TLS connections alive (as a browser or an API client does); ``fresh``: a new
    connection for every request instead."""
    import aiohttp

    tls = ssl.create_default_context(cafile=str(cafile))
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls, limit=connections, force_close=fresh),
        timeout=aiohttp.ClientTimeout(total=15),
    )


#: What a worker sends next: (method, path) for its n-th request.
Plan = Callable[[int, int], tuple[str, str]]


@dataclass
class Load:
    """``workers`` clients, each sending its next request as soon as the last is answered,
    until :meth:`stop`; every answer is in :attr:`shots`."""

    session: Any  # aiohttp.ClientSession
    base_url: str
    plan: Plan
    workers: int
    shots: list[Shot] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(self.workers)]

    async def stop(self) -> list[Shot]:
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        return self.shots

    async def _worker(self, worker: int) -> None:
        import aiohttp

        n = 0
        while not self._stopping.is_set():
            method, path = self.plan(worker, n)
            n += 1
            started = time.monotonic()
            try:
                async with self.session.request(method, self.base_url + path) as answer:
                    body = await answer.read()
                    shot = Shot(
                        worker,
                        method,
                        path,
                        started,
                        time.monotonic() - started,
                        answer.status,
                        {k.lower(): v for k, v in answer.headers.items()},
                        body,
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                took = time.monotonic() - started
                shot = Shot(worker, method, path, started, took, 0, {}, b"", repr(exc))
            self.shots.append(shot)

    def between(self, start: float, end: float = float("inf")) -> list[Shot]:
        """The requests sent at ``start`` or later and answered before ``end``."""
        return [s for s in self.shots if s.started >= start and s.ended < end]

    async def until(self, count: int, after: float = 0.0, within: float = 10.0) -> None:
        """Wait until ``count`` requests sent at ``after`` or later are answered."""
        deadline = time.monotonic() + within
        while len(self.between(after)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} answers within {within} s")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(load: Load) -> AsyncIterator[Load]:
    """``load`` started, stopped on the way out (its shots stay)."""
    load.start()
    try:
        yield load
    finally:
        await load.stop()


async def eventually(check: Callable[[], bool], within: float, what: str) -> float:
    """Wait until ``check()`` holds (a deadline, not a sleep): the monotonic time it did."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic()


@contextlib.contextmanager
def identity_for(short_tmp: Path, section: str) -> Iterator[RunningIdentityServer]:
    """The identity service for a gateway of ``section`` (:func:`liverig.live_identity`)."""
    from liverig import live_identity

    yield from live_identity(short_tmp, section)


@dataclass(frozen=True)
class LoadedEdge:
    """A running gateway (``edge``: an :class:`edgerig.Edge`), its public port as raw TLS
    reaches it (``raw``: a :class:`~trustmesh.testing.rawtls.RawTLS`), the :class:`Load` on
    it, and the slowest of the load's first answers (``baseline``, in seconds)."""

    edge: Any
    raw: Any
    load: Load
    baseline: float


@contextlib.asynccontextmanager
async def loaded_edge(short_tmp: Path, section: str, seen: list[str]) -> AsyncIterator[LoadedEdge]:
    """A gateway of ``section`` whose upstream notes in ``seen`` the path of each request
    it is asked, with four clients on keep-alive connections sending ``GET /things/ok``
    back to back, 40 of them answered; the load is stopped on the way out (its shots
    stay)."""
    from edgerig import edge_stack, recording

    from trustmesh import crypto
    from trustmesh.testing.rawtls import RawTLS

    with identity_for(short_tmp, section) as identity:
        async with (
            edge_stack(identity, short_tmp, section, recording(seen)) as edge,
            client_session(crypto.edge_ca_path(edge.rig.state), 4) as session,
        ):
            raw = RawTLS(edge.gateway.public.port, crypto.edge_ca_path(edge.rig.state))
            load = Load(session, edge.gateway.url, lambda _w, _n: ("GET", "/things/ok"), 4)
            async with running(load):
                await load.until(40)
                yield LoadedEdge(edge, raw, load, max(s.took for s in load.shots))


# -- slow clients -------------------------------------------------------------------------


@dataclass(frozen=True)
class Trickled:
    """What a slow client saw (monotonic times): when it began, when it sent its last
    byte, when the first byte of the answer came, and everything the server sent before
    it closed the connection."""

    began: float
    last_sent: float
    answered: float
    answer: bytes
    error: str = ""  # what went wrong instead (no answer)

    @property
    def status(self) -> int:
        return int(self.answer[9:12]) if self.answer[:5] == b"HTTP/" else 0

    def said(self) -> dict[str, Any]:
        return {**self.__dict__, "answer": self.answer.decode("latin-1")}

    @classmethod
    def heard(cls, said: dict[str, Any]) -> Trickled:
        return cls(**{**said, "answer": said["answer"].encode("latin-1")})


async def trickle(
    raw: Any, source: str, first: bytes, drip: bytes, *, gap: float, within: float
) -> Trickled:
    """On a TLS connection from ``source`` (``raw``: a
    :class:`~trustmesh.testing.rawtls.RawTLS`), send ``first``, then ``drip`` one byte
    every ``gap`` seconds (then nothing) until the server answers; then read until it
    closes the connection (TimeoutError if it has not within ``within`` seconds)."""
    from trustmesh.testing.rawtls import close, until_closed

    reader, writer = await raw.open(source)
    try:
        writer.write(first)
        began = last = time.monotonic()
        answer = asyncio.ensure_future(reader.read(1))
        for byte in drip:
            done, _ = await asyncio.wait([answer], timeout=gap)
            if done:
                break
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(bytes([byte]))
            last = time.monotonic()
        head = await asyncio.wait_for(answer, within)
        answered = time.monotonic()
        rest = await until_closed(reader, within)
        return Trickled(began, last, answered, head + rest)
    finally:
        await close(writer)


# -- child processes ----------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": _SRC, "PYTHONDONTWRITEBYTECODE": "1"}


async def _spawn(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=_child_env(),
        limit=1 << 24,  # a line may tell of thousands of connections
    )


async def _line(process: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), within)
    if not line:
        raise RuntimeError(f"the child process ended ({await process.wait()}) without a word")
    said: dict[str, Any] = json.loads(line)
    return said


async def _reap(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
    await process.wait()


@dataclass
class UpstreamProcess:
    """An instance of ``spiffe_id``'s service in a child process: mTLS with its SVID from
    the Workload API at ``address``, registered in discovery at ``discovery_url``; it
    answers ``{"instance": name}`` to any request (its health probe ``200``)."""

    name: str
    address: str
    discovery_url: str
    spiffe_id: str
    url: str = ""
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> UpstreamProcess:
        self.process = await _spawn(
            "upstream", self.address, self.discovery_url, self.spiffe_id, self.name
        )
        try:
            self.url = (await _line(self.process, 60))["url"]
        except BaseException:
            await _reap(self.process)
            raise
        return self

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no deregistration (discovery still lists it)."""
        if self.process is not None:
            await _reap(self.process)


@dataclass
class Flood:
    """A child process that opens ``count`` plain TCP connections to ``port``, spread over
    the loopback ``sources``, and sends nothing on them."""

    port: int
    count: int
    sources: Sequence[str]
    process: asyncio.subprocess.Process | None = None

    async def open(self) -> dict[str, Any]:
        """Open them all: ``{"opened", "failed"}`` (connects that never completed)."""
        self.process = await _spawn("flood", str(self.port), str(self.count), *self.sources)
        try:
            return await _line(self.process, 120)
        except BaseException:
            await _reap(self.process)
            raise

    async def tally(self) -> dict[str, Any]:
        """How the connections stand now: ``{"open", "closed"}`` (closed by the server:
        end of stream or reset)."""
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"tally\n")
        await self.process.stdin.drain()
        return await _line(self.process, 60)

    async def close(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None and self.process.returncode is None:
                with contextlib.suppress(ConnectionError):
                    self.process.stdin.write(b"quit\n")
                    await self.process.stdin.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
            await _reap(self.process)


@dataclass(frozen=True)
class Sent:
    """``count`` connections that each send ``first``, then ``drip`` a byte at a time."""

    first: bytes
    drip: bytes = b""
    count: int = 1


async def remote_clients(
    port: int,
    cafile: Path,
    plan: Sequence[Sent],
    sources: Sequence[str],
    *,
    ramp: float,
    gap: float = 0.2,
) -> list[list[Trickled]]:
    """Every connection of ``plan`` (:func:`trickle`, a byte of a drip every ``gap``
    seconds), from a process of their own (their TLS is not the gateway's work), started
    evenly over ``ramp`` seconds from ``sources`` in turn: what each saw, by entry."""
    process = await _spawn("clients")
    try:
        assert process.stdin is not None
        order = {
            "port": port,
            "cafile": str(cafile),
            "plan": [[s.first.decode("latin-1"), s.drip.decode("latin-1"), s.count] for s in plan],
            "sources": list(sources),
            "ramp": ramp,
            "gap": gap,
        }
        process.stdin.write(json.dumps(order).encode() + b"\n")
        await process.stdin.drain()
        said = await _line(process, 120)
    finally:
        await _reap(process)
    seen = iter([Trickled.heard(t) for t in said["trickled"]])
    return [[next(seen) for _ in range(s.count)] for s in plan]


# -- the children's side ------------------------------------------------------------------


def _say(what: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(what) + "\n")
    sys.stdout.flush()


async def _serve_upstream(address: str, discovery_url: str, spiffe_id: str, name: str) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from trustmesh.config.gateway import HealthCheck
    from trustmesh.platform.listeners import start
    from trustmesh.sdk.discovery import DiscoveryClient
    from trustmesh.sdk.x509source import X509Source

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def answer(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"instance": name})

    app = Starlette(
        routes=[
            Route(HealthCheck().path, health),
            Route("/{p:path}", answer, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )
    source = X509Source(address, spiffe_id=spiffe_id)
    served = await start(app, source=source)
    url = f"https://127.0.0.1:{served.port}"
    await DiscoveryClient(served.tls, discovery_url).register(url)
    _say({"url": url})
    await asyncio.Event().wait()  # until killed


def _closed(sock: socket.socket) -> bool:
    """The server closed it (end of stream, or a reset)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _flood(port: int, count: int, sources: list[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 64), hard))
    held: list[socket.socket] = []
    failed = 0
    for i in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.bind((sources[i % len(sources)], 0))
            sock.connect(("127.0.0.1", port))
        except OSError:
            failed += 1
            sock.close()
            continue
        held.append(sock)
    _say({"opened": len(held), "failed": failed})
    for command in sys.stdin:
        if command.strip() == "tally":
            closed = sum(1 for s in held if _closed(s))
            _say({"open": len(held) - closed, "closed": closed})
        else:
            break
    for sock in held:
        sock.close()


async def _clients(order: dict[str, Any]) -> None:
    from trustmesh.testing.rawtls import RawTLS

    raw = RawTLS(order["port"], Path(order["cafile"]))
    sources, ramp, gap = order["sources"], order["ramp"], order["gap"]
    sends = [
        (first.encode("latin-1"), drip.encode("latin-1"))
        for first, drip, count in order["plan"]
        for _ in range(count)
    ]

    async def one(i: int, first: bytes, drip: bytes) -> dict[str, Any]:
        await asyncio.sleep(ramp * i / len(sends))
        try:
            said = await trickle(raw, sources[i % len(sources)], first, drip, gap=gap, within=15)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            said = Trickled(0, 0, 0, b"", repr(exc))
        return said.said()

    trickled = await asyncio.gather(*(one(i, *sent) for i, sent in enumerate(sends)))
    _say({"trickled": trickled})


def main(argv: list[str]) -> None:
    if argv[0] == "upstream":
        asyncio.run(_serve_upstream(*argv[1:5]))
    elif argv[0] == "clients":
        asyncio.run(_clients(json.loads(sys.stdin.readline())))
    elif argv[0] == "flood":
        _flood(int(argv[1]), int(argv[2]), argv[3:])
    else:
        raise SystemExit(f"unknown child: {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
