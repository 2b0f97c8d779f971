"""Stop a child process a test started (a component run as ``python -m trustmesh.…``)."""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["stop_process"]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM to ``proc`` if it still runs, then SIGKILL if it has not exited within
    ``timeout`` seconds; either way it is reaped (waited for, each wait at most
    ``timeout``) before this returns, so that its sockets and its port are free."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
