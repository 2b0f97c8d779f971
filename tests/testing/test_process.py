"""trustmesh.testing.process.stop_process: SIGTERM, SIGKILL past the timeout, and the
process reaped either way; one that has already exited is left alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from trustmesh.testing.process import stop_process

#: Each says it is ready (its SIGTERM handler, if any, in place), then sleeps.
SLEEPS = "import time; print('ready', flush=True); time.sleep(60)"
IGNORES_TERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEPS


def _ready(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_process_that_exits_on_sigterm_is_reaped() -> None:
    with _ready(SLEEPS) as proc:
        stop_process(proc, 10)
        assert proc.returncode == -signal.SIGTERM


def test_one_that_ignores_sigterm_is_killed_after_the_timeout_and_reaped() -> None:
    with _ready(IGNORES_TERM) as proc:
        began = time.monotonic()
        stop_process(proc, 0.5)
        assert proc.returncode == -signal.SIGKILL
        assert time.monotonic() - began >= 0.5


def test_one_that_has_exited_is_left_alone() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait(10)
        stop_process(proc, 10)
        assert proc.returncode == 0
