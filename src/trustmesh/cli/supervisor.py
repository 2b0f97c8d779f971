"""Process supervision for ``trustmesh up``: start components, watch, restart, stop.

Files below ``<state>/run/``: ``supervisor.lock`` (held with flock for as long as a
supervisor runs: a lock nobody holds is stale, whatever the files say),
``supervisor.json`` and one ``<component>.json`` per child (pid + start time, so a pid
that the kernel has since given to another process is never signalled).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trustmesh.cli.launcher import Child, Launcher
from trustmesh.errors import StateError, TrustmeshError, UnavailableError
from trustmesh.platform.procfs import process_alive as process_alive
from trustmesh.platform.procfs import start_time_of

_PR_SET_PDEATHSIG = 1
RESTART_LIMIT = 5  # restarts of one component within RESTART_WINDOW before giving up
RESTART_WINDOW = 60.0
STOP_GRACE = 10.0
#: Beyond a component's drain (``listen.drain``), what it gets to stop and flush its
#: events before it is killed.
FLUSH_GRACE = 10.0
#: Stopped after the others: the audit collector (their last events) and the identity
#: service (their SVIDs, and their leaving discovery).
STOPPED_LAST = ("audit", "identity")


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 30.0
    #: Called at every (re)start for what changes per start, e.g. a fresh join token.
    env_factory: Callable[[], dict[str, str]] | None = None
    #: Called once the component is ready at ``up`` (the demo's secrets, say); a
    #: TrustmeshError fails the start.
    on_ready: Callable[[], None] | None = None
    #: Started with the ``together`` specs next to it at ``up``, none waiting for
    #: another to be ready (declared services: each finds its peers when it calls them).
    together: bool = False


@dataclass(frozen=True)
class RunPaths:
    state: Path

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def lock(self) -> Path:
        return self.run / "supervisor.lock"

    @property
    def supervisor(self) -> Path:
        return self.run / "supervisor.json"

    def component(self, name: str) -> Path:
        return self.run / f"{name}.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def write_json(path: Path, doc: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, object] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def hang_up(answers: dict[str, tuple[int, Path]], wait: float) -> dict[str, dict[str, object]]:
    """``SIGHUP`` to each named process (``name: (pid, the file it answers in)``), then
    each one's answer, once the file's ``at`` has moved past what it said before.
    UnavailableError naming the first that does not answer within ``wait`` seconds."""
    before = {name: _answered_at(path) for name, (_, path) in answers.items()}
    for pid, _ in answers.values():
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + wait
    for name, (_, path) in answers.items():
        while _answered_at(path) <= before[name]:
            if time.monotonic() > deadline:
                raise UnavailableError(f"{name} did not answer within {wait:g}s (see its log)")
            time.sleep(0.05)
    return {name: read_json(path) or {} for name, (_, path) in answers.items()}


def _answered_at(path: Path) -> float:
    """When a process last said, in ``path``, how a reload went (0: never)."""
    at = (read_json(path) or {}).get("at")
    return float(at) if isinstance(at, int | float) else 0.0


def recorded_process(path: Path) -> tuple[int, int] | None:
    """(pid, start time) of the process a run file records, while it lives (the start
    time tells it from a later process that reused the pid)."""
    doc = read_json(path)
    pid, start = (doc or {}).get("pid"), (doc or {}).get("start_time")
    if isinstance(pid, int) and isinstance(start, int) and process_alive(pid, start):
        return pid, start
    return None


def supervisor_running(paths: RunPaths) -> bool:
    """Whether a supervisor holds the lock (the only reliable sign of life)."""
    if not paths.lock.exists():
        return False
    fd = os.open(paths.lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    def __init__(
        self,
        state: Path,
        components: Sequence[ComponentSpec],
        ready: Callable[[ComponentSpec], bool],
        *,
        log: Callable[[str], None],
        stop_grace: float = STOP_GRACE,
        launcher: Launcher | None = None,
    ) -> None:
        self.paths = RunPaths(state.absolute())
        #: how long the children get, from SIGTERM, to drain, flush and exit
        self.stop_grace = stop_grace
        self.components = list(components)
        self.ready = ready
        self.log = log
        #: forks the platform's components from this process (:mod:`.launcher`)
        self.launcher = launcher or Launcher(fork=False)
        self.children: dict[str, Child] = {}
        self.restarts: dict[str, list[float]] = {}
        self.stopping = False
        self._lock_fd: int | None = None

    # -- the lock -------------------------------------------------------------------------
    def acquire(self) -> None:
        self.paths.run.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.paths.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"trustmesh is already running with state {self.paths.state}"
            ) from None
        self._lock_fd = fd
        reap_orphans(self.paths, self.log)  # left by a supervisor that was killed
        write_json(
            self.paths.supervisor,
            {
                "pid": os.getpid(),
                "start_time": start_time_of(os.getpid()),
                "started_at": time.time(),
                "stop_grace": self.stop_grace,  # how long `down` waits, and more
            },
        )

    def release(self) -> None:
        # supervisor.json stays, with its last phase, for `up --detach` to read the outcome
        for path in self.paths.run.glob("*.json"):
            if path != self.paths.supervisor:
                path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- children -------------------------------------------------------------------------
    def start(self, spec: ComponentSpec) -> bool:
        """Start ``spec``'s process; False (logged) when what it needs could not be had
        (its join token, say): the component stays down, and counts as a failed start."""
        try:
            made = spec.env_factory() if spec.env_factory else {}
        except TrustmeshError as exc:
            self.log(f"{spec.name} not started: {exc.detail}")
            return False
        fd = os.open(self.paths.log(spec.name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        log = os.fdopen(fd, "ab", buffering=0)
        env = {**os.environ, **spec.env, **made}
        try:
            proc = self.launcher.spawn(spec.name, spec.argv, env, log, _die_with_parent)
        finally:
            log.close()
        self.children[spec.name] = proc
        write_json(
            self.paths.component(spec.name),
            {"pid": proc.pid, "start_time": _start_time_or_zero(proc.pid), "argv": list(spec.argv)},
        )
        return True

    def start_all(self) -> str | None:
        """Start every component in order, each once the one before is ready (a run of
        ``together`` ones at once); return the name of one that failed, if any. The
        components are imported ahead (:meth:`Launcher.preload`) while the first one —
        exec'd, then — starts: on another core, its own imports take as long."""
        for index, wave in enumerate(_waves(self.components)):
            for spec in wave:
                if not self.start(spec):
                    return spec.name
            if index == 0:
                self.launcher.preload(spec.argv for spec in self.components)
            for spec in wave:
                failed = self._ready(spec)
                if failed:
                    return failed
        return None

    def _ready(self, spec: ComponentSpec) -> str | None:
        """Wait for ``spec`` to be ready and run its ``on_ready``; its name if it fails."""
        deadline = time.monotonic() + spec.ready_timeout
        while not self.ready(spec):
            if self.stopping:
                return spec.name
            if self.children[spec.name].poll() is not None or time.monotonic() > deadline:
                return spec.name
            time.sleep(0.1)
        if spec.on_ready is not None:
            try:
                spec.on_ready()
            except TrustmeshError as exc:
                self.log(f"{spec.name} started, but what follows its start failed: {exc.detail}")
                return spec.name
        return None

    def watch(self) -> str | None:
        """Block until asked to stop; restart crashed children with backoff."""
        while not self.stopping:
            time.sleep(0.25)
            for spec in self.components:
                proc = self.children.get(spec.name)
                if proc is None or proc.poll() is None or self.stopping:
                    continue
                now = time.monotonic()
                recent = [t for t in self.restarts.get(spec.name, []) if now - t < RESTART_WINDOW]
                if len(recent) >= RESTART_LIMIT:
                    self.log(f"{spec.name} keeps exiting (code {proc.returncode}); giving up")
                    return spec.name
                self.restarts[spec.name] = [*recent, now]
                self.log(f"{spec.name} exited with code {proc.returncode}; restarting")
                time.sleep(min(2 ** len(recent) * 0.2, 5.0))
                self.start(spec)
        return None

    def stop_all(self) -> None:
        """SIGTERM to every child, in two waves: the others first (each drains its
        requests and flushes its events), then the ones they flush to and register with
        (:data:`STOPPED_LAST`): each wave waited for, or killed at its grace's end."""
        order = [s.name for s in reversed(self.components)]
        self._stop([n for n in order if n not in STOPPED_LAST], self.stop_grace)
        self._stop([n for n in order if n in STOPPED_LAST], self.stop_grace)

    def _stop(self, names: Sequence[str], grace: float) -> None:
        procs = [p for p in map(self.children.get, names) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, handler)


def _waves(specs: Sequence[ComponentSpec]) -> list[list[ComponentSpec]]:
    """``specs`` in the order they start: each alone, but a run of ``together`` ones."""
    waves: list[list[ComponentSpec]] = []
    for spec in specs:
        if spec.together and waves and waves[-1][-1].together:
            waves[-1].append(spec)
        else:
            waves.append([spec])
    return waves


def _start_time_or_zero(pid: int) -> int:
    try:
        return start_time_of(pid)
    except (OSError, ValueError, IndexError):
        return 0


def reap_orphans(paths: RunPaths, log: Callable[[str], None]) -> None:
    """Stop component processes recorded by a supervisor that is gone (crash, SIGKILL)."""
    for path in paths.run.glob("*.json"):
        if path == paths.supervisor:
            continue
        found = recorded_process(path)
        if found is not None:
            pid, start = found
            log(f"stopping leftover {path.stem} (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, start, STOP_GRACE)
            if process_alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)


def _wait_gone(pid: int, start: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid, start):
            return True
        time.sleep(0.05)
    return not process_alive(pid, start)


def stop_stack(state: Path, log: Callable[[str], None], timeout: float = 30.0) -> bool:
    """``trustmesh down``: stop the supervisor (it stops its children) and any leftovers.
    Returns True if something was running."""
    paths = RunPaths(state.absolute())
    if not paths.run.exists():
        return False
    was_running = False
    doc = read_json(paths.supervisor)
    pid, start = (doc or {}).get("pid"), (doc or {}).get("start_time")
    grace = (doc or {}).get("stop_grace")
    if isinstance(grace, int | float):  # its children drain first: wait for them
        timeout = max(timeout, 2 * float(grace) + STOP_GRACE)  # two waves (stop_all)
    if supervisor_running(paths) and isinstance(pid, int) and isinstance(start, int):
        was_running = True
        if process_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, start, timeout):
                log(f"supervisor (pid {pid}) did not stop in {timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, start, 5)
    leftovers = [p for p in paths.run.glob("*.json") if p != paths.supervisor]
    if leftovers:
        was_running = True
    reap_orphans(paths, log)
    paths.supervisor.unlink(missing_ok=True)
    return was_running


def python_module_argv(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *args)
