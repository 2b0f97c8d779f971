"""The supervisor's launcher: a platform component forked from a process that imported
it ahead runs as ``python -m`` would run it (its module as ``__main__``, its argv, its
environment, its exit status), and every other start — a declared service, a changed
interpreter environment, ``TRUSTMESH_SPAWN=exec`` — is exec'd as before.

The forks happen in a process of their own: pytest's workers have threads, from which
the launcher (rightly) does not fork."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trustmesh.cli.launcher import ForkedChild, Launcher, module_of

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from trustmesh.cli.launcher import Launcher, ForkedChild

    out = Path(sys.argv[1])
    launcher = Launcher(fork=True)
    identity = (sys.executable, "-m", "trustmesh.identity")
    runner = (sys.executable, "-m", "trustmesh.sdk.runner", "x:app")
    launcher.preload([identity, runner])
    report = {"loaded": sorted(launcher.loaded),
              "main_left": "trustmesh.identity.__main__" in sys.modules}

    def start(name, argv, env):
        with open(out / f"{name}.log", "ab") as log:
            child = launcher.spawn(name, argv, env, log, lambda: print("preexec", flush=True))
        return child

    env = {**os.environ, "MARK": "given"}
    helped = start("help", (*identity, "--help"), env)
    bad = start("bad", (*identity, "--no-such-option"), env)
    report["types"] = [type(c).__name__ for c in (helped, bad)]
    report["codes"] = [helped.wait(30), bad.wait(30)]
    report["service"] = type(launcher.spawn("svc", runner, env, open(os.devnull, "wb"),
                                            lambda: None)).__name__
    changed = {**env, "PYTHONPATH": "/nowhere"}
    report["changed_env_forks"] = launcher.forks((*identity, "--help"), changed)
    report["same_env_forks"] = launcher.forks((*identity, "--help"), env)
    print(json.dumps(report))
    """
)


def test_a_platform_component_is_forked_and_runs_as_python_m_would(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["loaded"] == ["trustmesh.identity"]  # a service's runner: never ahead
    assert report["main_left"] is False  # run afresh as __main__ in each child
    assert report["types"] == ["ForkedChild", "ForkedChild"]
    assert report["codes"] == [0, 2]  # --help; argparse's usage error
    helped = (tmp_path / "help.log").read_text()
    assert helped.startswith("preexec\n")  # the supervisor's hook, in the child, first
    assert "usage: trustmesh-identity" in helped  # the module's own argv and parser
    assert "the following arguments are required: --config" in (tmp_path / "bad.log").read_text()
    assert report["service"] == "Popen"
    assert report["changed_env_forks"] is False  # the interpreter reads PYTHON* at start
    assert report["same_env_forks"] is True


def test_exec_is_kept_when_asked_or_when_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTMESH_SPAWN", "exec")
    launcher = Launcher()
    launcher.preload([(sys.executable, "-m", "trustmesh.identity")])
    assert launcher.fork is False
    assert launcher.loaded == set()
    assert module_of(("python3", "-m", "trustmesh.identity")) is None  # another interpreter
    assert module_of((sys.executable, "app.py")) is None


def test_a_forked_child_waits_and_is_signalled_as_popen_is() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    child = ForkedChild(proc.pid)
    try:
        assert child.poll() is None
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.2)
        assert time.monotonic() - started < 2
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == -signal.SIGTERM
        child.kill()  # after its end: nothing is signalled (the pid may be another's)
        assert child.returncode == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
