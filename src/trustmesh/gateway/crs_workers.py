"""crs mode's inspections off the gateway's event loop: worker processes, each holding its
own ModSecurity engines (:class:`~trustmesh.gateway.crs.CrsFilter`), one request at a
time each.

The binding holds the GIL while ModSecurity runs (0.5 ms for a GET, ≈ 3 ms for a 1 KB
body, up to ≈ 0.1 s for a hostile 32 KiB one): inspected in the gateway's process, every
other request waits that long. Here the event loop only hands the request over (method,
target, headers, body, client: pickled over a socket pair) and waits for the verdict,
serving other requests meanwhile; ``gateway.crs_workers`` processes inspect side by side.

Fail closed, never open:

- **a verdict late past ``deadline``** (a pattern's backtracking, a wedged worker): the
  worker is killed and replaced, and the request is refused
  (:class:`InspectionUnavailableError`: 503 ``inspection-unavailable``, recorded);
- **a worker that dies** (a crash in the engine): the same, for the request it held;
- **a request whose client goes away** mid-inspection: the worker finishes, its verdict
  is dropped, and only then does it take another request (a verdict never reaches the
  wrong request);
- **more requests than workers:** they queue; the deadline counts from the request's
  turn, and a request that waits past ``deadline`` for one is refused too.

A worker builds the engine for a rule set (:class:`CrsSpec`) the first time a request
needs it (≈ 30 ms), and keeps it: a reload's new rule set costs its first request that.
The gateway's process still loads each rule set itself when it reads the declaration, so
a rule set that does not load is a ConfigError there, never a worker's failure.

Workers are fresh interpreters running this module (never a ``fork`` of the gateway's
process, which holds threads, locks, keys and sockets; nor ``spawn``, which would import
the gateway's main module again), given one end of a socket pair, started lazily, on the
first inspection or :meth:`CrsWorkers.start`; each exits when its socket closes (the
gateway gone, even by ``SIGKILL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Final

from trustmesh.errors import UnavailableError
from trustmesh.gateway.crs import CrsFilter, CrsFinding, CrsSpec

__all__ = ["CrsWorkers", "InspectionUnavailableError"]

log = logging.getLogger(__name__)

#: How long a worker may take over one request before it is killed (seconds).
DEADLINE: Final = 5.0


class InspectionUnavailableError(UnavailableError):
    """No verdict on the request: the workers failed or were too late. Refuse it."""


def _serve(conn: Connection) -> None:
    """A worker's life: a request in, its verdict out (``("ok", finding | None)``, or
    ``("error", what)``), until the socket closes."""
    filters: dict[CrsSpec, CrsFilter] = {}
    while True:
        try:
            spec, request = pickle.loads(conn.recv_bytes())  # noqa: S301 - our own process's  # nosec B301 # the parent's bytes over a private pipe, never network data
        except (EOFError, OSError):
            return
        try:
            found = filters.get(spec)
            if found is None:
                found = filters[spec] = spec.build()
            reply: tuple[str, Any] = ("ok", found.inspect(**request))
        except Exception as exc:  # noqa: BLE001 - told to the gateway, which refuses
            reply = ("error", f"{type(exc).__name__}: {exc}"[:300])
        try:
            conn.send_bytes(pickle.dumps(reply))
        except OSError:
            return


class _Worker:
    """One worker process and the gateway's end of its socket; ``reply`` is the verdict
    awaited, if any."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        ours, theirs = socket.socketpair()
        with theirs:  # a fresh interpreter running this module, given its end alone
            self.process = subprocess.Popen(  # noqa: S603 - this interpreter, this module
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self.conn = Connection(ours.detach())
        self.loop = loop
        self.reply: asyncio.Future[tuple[str, Any]] | None = None
        self.dead = False  # its socket closed: it exited, or was killed
        loop.add_reader(self.conn.fileno(), self._readable)

    def ask(self, spec: CrsSpec, request: dict[str, Any]) -> asyncio.Future[tuple[str, Any]]:
        self.reply = self.loop.create_future()
        self.conn.send_bytes(pickle.dumps((spec, request)))
        return self.reply

    def _readable(self) -> None:
        try:
            answer = pickle.loads(self.conn.recv_bytes())  # noqa: S301 - our own child's  # nosec B301 # our own worker's answer over a private pipe
        except (EOFError, OSError, pickle.UnpicklingError):
            answer = ("error", "the worker exited")
            self.dead = True
            self.loop.remove_reader(self.conn.fileno())
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():
            reply.set_result(answer)

    def kill(self) -> asyncio.Future[None]:
        """Kill it (in the event loop's thread, never waiting there); the future is done
        once the process is reaped (in a thread of its own)."""
        self.dead = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.conn.fileno())
        self.process.kill()
        self.conn.close()
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(("error", "the worker was stopped"))
        return self.loop.run_in_executor(None, self._reap)

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def alive(self) -> bool:
        return not self.dead and self.process.poll() is None


class CrsWorkers:
    """``count`` worker processes inspecting for the gateway (module docstring)."""

    def __init__(self, count: int, *, deadline: float = DEADLINE) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.count = count
        self.deadline = deadline
        self._idle: deque[_Worker] = deque()
        self._all: list[_Worker] = []
        self._turns: deque[asyncio.Future[_Worker]] = deque()  # requests waiting for one
        self.replaced = 0  # workers killed or dead and replaced
        self._closed = False

    def start(self) -> None:
        """Start the workers now (else the first inspection does)."""
        if self._closed:
            raise InspectionUnavailableError("the injection filter's workers are stopped")
        loop = asyncio.get_running_loop()
        while len(self._all) < self.count:
            worker = _Worker(loop)
            self._all.append(worker)
            self._release(worker)

    async def inspect(
        self,
        spec: CrsSpec,
        *,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        client: tuple[str, int],
    ) -> CrsFinding | None:
        """The CRS's verdict on the request, as :meth:`CrsFilter.inspect` gives it;
        :class:`InspectionUnavailableError` where there is none in time."""
        if len(self._all) < self.count:
            self.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        worker = await self._turn()
        request = {
            "method": method,
            "target": bytes(target),
            "headers": [(bytes(n), bytes(v)) for n, v in headers],
            "body": bytes(body),
            "client": (str(client[0]), int(client[1])),
        }
        try:
            reply = worker.ask(spec, request)
        except OSError:
            self._replace(worker)
            raise InspectionUnavailableError("the injection filter's worker is gone") from None
        # the deadline is the worker's: a request that waited its turn still gets its own
        try:
            kind, value = await asyncio.wait_for(asyncio.shield(reply), self.deadline)
        except TimeoutError:
            log.warning(
                "gateway: a crs inspection took over %.1fs (%.1fs with its wait for a "
                "worker); the worker is replaced",
                self.deadline,
                loop.time() - started,
            )
            self._replace(worker)
            raise InspectionUnavailableError(
                "the injection filter did not answer in time"
            ) from None
        except asyncio.CancelledError:  # the client went: the worker is free once it answers
            reply.add_done_callback(lambda _: self._after(worker))
            raise
        if kind != "ok":  # a worker that failed once is not trusted with another
            log.error("gateway: a crs worker failed: %s", value)
            self._replace(worker)
            raise InspectionUnavailableError("the injection filter failed") from None
        self._release(worker)
        finding: CrsFinding | None = value
        return finding

    async def _turn(self) -> _Worker:
        while self._idle:
            worker = self._idle.popleft()
            if worker.alive():
                return worker
            self._replace(worker)  # died idle: its successor joins the idle ones
        turn: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            return await asyncio.wait_for(asyncio.shield(turn), self.deadline)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if turn.done() and not turn.cancelled():  # handed one as it gave up: hand it on
                self._release(turn.result())
            else:
                turn.cancel()
            if isinstance(exc, TimeoutError):
                raise InspectionUnavailableError(
                    "the injection filter's workers are all busy"
                ) from None
            raise

    def _release(self, worker: _Worker) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(worker)
                return
        self._idle.append(worker)

    def _after(self, worker: _Worker) -> None:
        """A worker whose verdict came for a request gone: back to work if it answered,
        else replaced."""
        if not worker.alive():
            self._replace(worker)
        elif self._all and worker in self._all:  # not closed meanwhile
            self._release(worker)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()  # reaped in a thread; not waited for here
        with contextlib.suppress(ValueError):
            self._all.remove(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        self.replaced += 1
        if self._closed:
            return
        fresh = _Worker(asyncio.get_running_loop())
        self._all.append(fresh)
        self._release(fresh)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._all]

    async def close(self) -> None:
        self._closed = True
        workers, self._all = self._all, []
        self._idle.clear()
        for turn in self._turns:
            turn.cancel()
        self._turns.clear()
        await asyncio.gather(*(worker.kill() for worker in workers))


if __name__ == "__main__":  # a worker: python -m trustmesh.gateway.crs_workers FD
    _serve(Connection(int(sys.argv[1])))
