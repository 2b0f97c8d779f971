"""The runtime guard's hook itself, each case in a child Python (an audit hook is
permanent and process-wide): it never recurses into what it does itself, judges every
thread, lets the import system, the standard library's code generators and the
platform's implied needs through, resolves paths before judging them, and — as its
docstring says — cannot see native code that was loaded before it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from trustmesh.reasons import Reason

PRELUDE = textwrap.dedent(
    """
    import json, os, sys, threading
    from trustmesh import events
    from trustmesh.config.runtime import RuntimeProfile
    from trustmesh.sdk import guard

    LOG = sys.argv[2]

    class AppendingSink:
        '''Opens its file for each event: its own write is an 'open' the hook sees.'''
        def emit(self, event):
            with open(LOG, "a") as file:
                file.write(event.to_json() + "\\n")

    profile = RuntimeProfile.model_validate(json.loads(sys.argv[1]))
    recorder = events.Recorder(AppendingSink(), component="orders")
    g = guard.RuntimeGuard(profile, recorder, writable=sys.argv[3:])

    def attempt(operation):
        try:
            return {"done": repr(operation())}
        except guard.RuntimeViolation as exc:
            return {"blocked": str(exc)}
    """
)


def run(tmp: Path, profile: dict[str, Any], body: str, *writable: str) -> dict[str, Any]:
    """Run ``body`` (after the prelude) in a child; its last line prints a JSON result."""
    log = tmp / "events.jsonl"
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(profile), str(log), *writable],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = log.read_text().splitlines() if log.exists() else []
    result["events"] = [json.loads(line)["unmapped"]["trustmesh"] for line in lines]
    return result


def test_the_hook_never_judges_its_own_work(short_tmp: Path) -> None:
    # the sink writes outside every writable path: judged, that write would be a
    # violation whose record is a write, and so on without end
    result = run(
        short_tmp,
        {"mode": "enforce"},
        """
        guard.install(g)
        print(json.dumps({"eval": attempt(lambda: eval("1 + 1"))}))
        """,
    )
    assert "blocked" in result["eval"]
    assert [e["reason"] for e in result["events"]] == [Reason.RUNTIME_DYNAMIC_CODE_DENIED.value]


def test_every_thread_is_judged(short_tmp: Path) -> None:
    outside = short_tmp / "outside.txt"
    result = run(
        short_tmp,
        {"mode": "enforce"},
        f"""
        guard.install(g)
        answers = []
        def write():
            answers.append(attempt(lambda: open({str(outside)!r}, "w")))
        worker = threading.Thread(target=write)
        worker.start()
        worker.join()
        print(json.dumps({{"thread": answers[0]}}))
        """,
        str(short_tmp / "events.jsonl"),
    )
    assert "blocked" in result["thread"]
    assert not outside.exists()
    (event,) = result["events"]
    assert (event["reason"], event["attributes"]["target"]) == (
        Reason.RUNTIME_WRITE_DENIED.value,
        str(outside),
    )


def test_imports_and_the_standard_librarys_code_generators_go_through(short_tmp: Path) -> None:
    package = short_tmp / "late"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 7\n")
    result = run(
        short_tmp,
        {"mode": "enforce"},
        f"""
        guard.install(g)
        sys.path.insert(0, {str(short_tmp)!r})
        import late, csv, decimal, fractions  # imported after the hook: marshal, compile
        import collections, dataclasses, typing
        Point = collections.namedtuple("Point", "x y")
        Box = dataclasses.make_dataclass("Box", [("size", int)])
        hint = typing.ForwardRef("list[int]")
        print(json.dumps({{"value": late.VALUE, "point": Point(1, 2).y, "box": Box(3).size}}))
        """,
    )
    assert (result["value"], result["point"], result["box"]) == (7, 2, 3)
    assert result["events"] == []
    assert not (package / "__pycache__").exists()  # no bytecode written once the hook is on


def test_a_symlink_out_of_a_writable_directory_is_judged_where_it_leads(short_tmp: Path) -> None:
    allowed = short_tmp / "allowed"
    allowed.mkdir()
    target = short_tmp / "elsewhere.txt"
    (allowed / "link").symlink_to(target)
    result = run(
        short_tmp,
        {"mode": "enforce"},
        f"""
        guard.install(g)
        inside = attempt(lambda: open({str(allowed / "inside.txt")!r}, "w").close())
        through = attempt(lambda: open({str(allowed / "link")!r}, "w").close())
        print(json.dumps({{"inside": inside, "through": through}}))
        """,
        str(allowed),
        str(short_tmp / "events.jsonl"),
    )
    assert "done" in result["inside"]
    assert "blocked" in result["through"]
    assert not target.exists()
    assert [e["attributes"]["target"] for e in result["events"]] == [str(allowed / "link")]


@pytest.mark.parametrize(
    ("connect", "event", "args", "allowed"),
    [
        (["10.0.0.0/8:5432"], "socket.connect", (None, ("10.20.30.40", 5432)), True),
        (["10.0.0.0/8:5432"], "socket.connect", (None, ("10.20.30.40", 5433)), False),
        (["10.0.0.0/8:*"], "socket.connect", (None, ("10.20.30.40", 5433)), True),
        (["[2001:db8::/32]:443"], "socket.connect", (None, ("2001:db8::7", 443, 0, 0)), True),
        (["localhost:8080"], "socket.connect", (None, ("127.0.0.1", 8080)), True),  # resolved
        (["localhost:8080"], "socket.connect", (None, ("127.0.0.1", 8081)), False),
        ([], "socket.connect", (None, ("192.0.2.1", 443)), False),
        ([], "socket.connect", (None, "/run/docker.sock"), False),
        ([], "socket.connect", (None, b"\x00abstract"), False),
        (["api.example.com:443"], "socket.getaddrinfo", ("API.example.com.", 443, 0, 0, 0), True),
        ([], "socket.getaddrinfo", ("192.0.2.1", 443, 0, 0, 0), True),  # numeric: no query
        ([], "socket.getaddrinfo", (None, 8080, 0, 0, 0), True),  # a listener's
        ([], "socket.getaddrinfo", ("data.exfil.example", 53, 0, 0, 0), False),
        ([], "socket.gethostbyname", ("data.exfil.example",), False),
    ],
)
def test_connect_rules(
    connect: list[str], event: str, args: tuple[Any, ...], allowed: bool
) -> None:
    # judged without a hook: the same decision the hook makes (nothing is installed here)
    from trustmesh import events
    from trustmesh.config.runtime import RuntimeProfile
    from trustmesh.sdk.guard import RuntimeGuard

    sink = events.MemorySink()
    guard = RuntimeGuard(
        RuntimeProfile.model_validate({"mode": "monitor", "connect": connect}),
        events.Recorder(sink, component="orders"),
    )
    guard.hook(event, args)
    expected = [] if allowed else [Reason.RUNTIME_CONNECT_DENIED]
    assert [e.reason for e in sink.events] == expected


def test_native_code_loaded_before_the_hook_is_not_seen(short_tmp: Path) -> None:
    """The documented limit: a library ctypes loaded before the hook calls system(3)
    itself; no audit event is raised, so nothing is judged, even in enforce mode."""
    marker = short_tmp / "ran"
    result = run(
        short_tmp,
        {"mode": "enforce"},
        f"""
        import ctypes
        libc = ctypes.CDLL(None)
        guard.install(g)
        spawn = attempt(lambda: os.system("true"))
        native = libc.system(b"touch {marker}")
        print(json.dumps({{"spawn": spawn, "native": native}}))
        """,
        str(short_tmp / "events.jsonl"),
    )
    assert "blocked" in result["spawn"]  # through Python: judged
    assert result["native"] == 0  # through native code: unseen, and done
    assert marker.exists()
    assert [e["reason"] for e in result["events"]] == [Reason.RUNTIME_SUBPROCESS_DENIED.value]


def test_a_guard_is_installed_once(short_tmp: Path) -> None:
    result = run(
        short_tmp,
        {"mode": "monitor"},
        """
        guard.install(g)
        try:
            guard.install(g)
            again = "installed twice"
        except RuntimeError as exc:
            again = str(exc)
        print(json.dumps({"again": again}))
        """,
    )
    assert result["again"] == "a runtime guard is already installed in this process"


def test_path_events_are_judged_on_the_path_they_write(short_tmp: Path) -> None:
    """A symlink's or link's target is content, not a write; a path relative to an open
    directory is judged where that directory is. (Judged without a hook, as the hook
    judges: nothing is installed here.)"""
    import os

    from trustmesh import events
    from trustmesh.config.runtime import RuntimeProfile
    from trustmesh.sdk.guard import RuntimeGuard

    inside, outside = short_tmp / "inside", short_tmp / "outside"
    inside.mkdir()
    outside.mkdir()
    sink = events.MemorySink()
    guard = RuntimeGuard(
        RuntimeProfile.model_validate({"mode": "monitor", "writable": [str(inside)]}),
        events.Recorder(sink, component="orders"),
    )
    fd_in = os.open(inside, os.O_RDONLY | os.O_DIRECTORY)
    fd_out = os.open(outside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cases: list[tuple[str, tuple[Any, ...], str | None]] = [
            ("os.symlink", ("/etc/passwd", str(inside / "l"), -1), None),
            ("os.symlink", (str(inside / "f"), str(outside / "l"), -1), str(outside / "l")),
            ("os.link", (str(outside / "f"), str(inside / "l"), -1, -1), None),
            ("os.mkdir", ("d", 0o700, fd_in), None),
            ("os.mkdir", ("d", 0o700, fd_out), str(outside / "d")),
            ("os.rename", (str(inside / "a"), str(outside / "b"), -1, -1), str(outside / "b")),
            ("os.rename", (str(outside / "a"), str(inside / "b"), -1, -1), str(outside / "a")),
            ("os.remove", (str(outside / "f"), -1), str(outside / "f")),
            ("os.chmod", (str(inside / "f"), 0o600, -1), None),
            ("os.truncate", (str(outside / "f"), 0), str(outside / "f")),
            ("open", (str(outside / "f"), "r", os.O_RDONLY), None),  # a read
            ("open", (str(outside / "f"), None, os.O_WRONLY | os.O_APPEND), str(outside / "f")),
        ]
        for event, args, judged in cases:
            before = len(sink.events)
            guard.hook(event, args)
            targets = [str(e.attributes["target"]) for e in sink.events[before:]]
            assert targets == ([] if judged is None else [judged]), (event, args)
    finally:
        os.close(fd_in)
        os.close(fd_out)
    assert {e.reason for e in sink.events} == {Reason.RUNTIME_WRITE_DENIED}
