"""Start the platform's components by forking a supervisor that has already imported
their code, rather than a fresh interpreter for each.

Each platform component is ``python -m trustmesh.<component> …``. A fresh interpreter
spends about 1.5 s of CPU importing what the component needs before it does anything
(pydantic models, SQLAlchemy, aiohttp, the Cedar engine), and ``up`` starts the
components one after another, each once the one before is ready. The supervisor
imports each component's modules once (:meth:`Launcher.preload`); a start then forks
it, and the child sets up what exec would have given it — its standard streams, its
environment, default signal handlers, no inherited descriptor (the supervisor's lock
among them) or exit handler, a name for ``ps -o comm``/``top`` (``tm-<name>``) — and
runs the module as ``__main__``, as ``python -m`` does. What was imported once is
frozen out of the collector's sight (:func:`gc.freeze`), so that collections in the
children do not copy its pages.

Exec is kept (and is what a start falls back to) for:

- a declared service, the SDK's runner included: its code is not the platform's, and it
  is given nothing of the supervisor's memory;
- a supervisor with more than one thread (a fork copies only the calling thread: a lock
  another thread held would stay held in the child);
- an environment whose ``PYTHON*`` variables differ from the supervisor's (the
  interpreter reads them only when it starts);
- ``TRUSTMESH_SPAWN=exec``, or a component whose modules could not be imported ahead.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import logging
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Final, NoReturn, Protocol

__all__ = ["SPAWN_ENV", "Child", "ForkedChild", "Launcher"]

#: ``exec``: start every component with a fresh interpreter.
SPAWN_ENV: Final = "TRUSTMESH_SPAWN"
#: The modules a start may fork for: the platform's own components.
PLATFORM: Final = frozenset(
    f"trustmesh.{name}" for name in ("identity", "auth", "secrets", "audit", "gateway")
)
_PR_SET_NAME: Final = 15

log = logging.getLogger("trustmesh.supervisor")


class Child(Protocol):
    """What the supervisor uses of a started process (a :class:`subprocess.Popen`'s)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


class ForkedChild:
    """A forked component: :class:`subprocess.Popen`'s waiting and signalling, by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a pid the kernel may have given to another
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def module_of(argv: Sequence[str]) -> str | None:
    """The module ``argv`` runs with this interpreter (``python -m MODULE …``)."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m":
        return argv[2]
    return None


class Launcher:
    """Starts components: forked from this process where it may, exec'd otherwise."""

    def __init__(self, *, fork: bool | None = None) -> None:
        self.fork = os.environ.get(SPAWN_ENV, "fork") != "exec" if fork is None else fork
        self.loaded: set[str] = set()

    def preload(self, argvs: Iterable[Sequence[str]]) -> None:
        """Import the modules of the platform components among ``argvs``; those that fail
        to import are exec'd (where they will fail in their own log)."""
        if not self.fork:
            return
        for module in sorted({m for m in map(module_of, argvs) if m in PLATFORM}):
            main = f"{module}.__main__"
            try:
                importlib.import_module(main)
            except Exception:
                log.debug("%s not imported ahead; it will be exec'd", module, exc_info=True)
                continue
            finally:  # run afresh, as __main__, in each child (runpy warns otherwise)
                sys.modules.pop(main, None)
            self.loaded.add(module)
        gc.collect()
        gc.freeze()

    def forks(self, argv: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether a start of ``argv`` in ``env`` is forked."""
        return (
            self.fork
            and module_of(argv) in self.loaded
            and _interpreter_env(env) == _interpreter_env(os.environ)
            and _threads() == 1
        )

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_file: IO[bytes],
        preexec: Callable[[], None],
    ) -> Child:
        """Start ``argv`` as ``name`` with ``env`` (the whole environment), its output
        to ``log_file``, ``preexec`` run in the child before the program."""
        if not self.forks(argv, env):
            return subprocess.Popen(  # noqa: S603 - argv built by trustmesh, never a shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env),
                preexec_fn=preexec,
                close_fds=True,
            )
        for stream in (sys.stdout, sys.stderr):  # nothing of ours printed twice
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: measured by the components it runs
            _run_forked(name, argv, env, log_file.fileno(), preexec)
        return ForkedChild(pid)


def _interpreter_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _run_forked(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_fd: int, preexec: Callable[[], None]
) -> NoReturn:
    """In the forked child: become ``argv``'s process, run its module, and exit with
    its status — never returning into the supervisor's frames below."""
    code = 1
    try:
        _as_if_exec(name, env, log_fd)
        preexec()
        sys.argv = [argv[2], *argv[3:]]  # run_module puts the module's file first
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    except BaseException:  # noqa: BLE001 - as the interpreter would: printed, status 1
        traceback.print_exc()
    finally:
        os._exit(_finish(code))


def _as_if_exec(name: str, env: Mapping[str, str], log_fd: int) -> None:
    """What a fresh process would have: default signal handlers, /dev/null in, the log
    out, no other descriptor, the child's own environment and exit handlers."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.environ.clear()
    os.environ.update(env)
    atexit._clear()  # the supervisor's are not the child's
    atexit.register(logging.shutdown)  # as the logging module registers at import
    with contextlib.suppress(OSError, AttributeError):  # a name for ps -o comm, top, pgrep
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, f"tm-{name}"[:15].encode(), 0, 0, 0)


def _status(code: Any) -> int:
    """The exit status ``SystemExit(code)`` gives, as the interpreter maps it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    """What the interpreter does at exit: wait for non-daemon threads, run the exit
    handlers, flush the streams."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code
