"""What the runtime guard's audit hook (trustmesh.sdk.guard) costs per audit event.

Run: ``.venv/bin/python benchmarks/runtime_guard.py [--n 1000000]``

The hook sees every audit event of the process, so the figure that matters is the cost
added to an event no rule judges (the import system, ``object.__getattr__``,
``sys._getframe`` … raise those all the time); then the cost of an event judged and
allowed (a lookup of a declared name, a write in a writable directory), and of a real
operation (opening a file to read it). Each is timed before the hook is installed, then
after (a hook cannot be removed: this process measures, and is then done).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

from trustmesh import events
from trustmesh.config.runtime import RuntimeProfile
from trustmesh.sdk import guard


def per_call_ns(operation: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(n):
            operation()
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def main(n: int) -> None:
    folder = tempfile.mkdtemp(prefix="tm-bench-")
    readable = os.path.join(folder, "read.txt")
    with open(readable, "w") as file:
        file.write("x")
    written = os.path.join(folder, "written.txt")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

    def read_file() -> object:
        with open(readable, "rb") as file:
            return file.read()

    cases: dict[str, tuple[Callable[[], object], int]] = {
        "event no rule judges (sys.audit)": (lambda: sys.audit("trustmesh.bench"), n),
        "lookup of a declared name (judged, allowed)": (
            lambda: sys.audit("socket.getaddrinfo", "localhost", 443, 0, 0, 0),
            n,
        ),
        "write in a writable directory (judged, allowed)": (
            lambda: sys.audit("open", written, "w", flags),
            n // 10,
        ),
        "open and read a small file (real operation)": (read_file, n // 20),
    }
    before = {name: per_call_ns(op, count) for name, (op, count) in cases.items()}
    sink = events.MemorySink()
    installed = guard.RuntimeGuard(
        RuntimeProfile(mode="enforce"),
        events.Recorder(sink, component="bench"),
        writable=[folder],
    )
    guard.install(installed)
    after = {name: per_call_ns(op, count) for name, (op, count) in cases.items()}
    if sink.events:
        raise SystemExit(f"the benchmark broke its own profile: {sink.events[0].attributes}")
    report = {
        name: {
            "without_hook_ns": round(before[name], 1),
            "with_hook_ns": round(after[name], 1),
            "added_ns": round(after[name] - before[name], 1),
        }
        for name in cases
    }
    print(json.dumps({"python": sys.version.split()[0], "per_call": report}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    main(parser.parse_args().n)
