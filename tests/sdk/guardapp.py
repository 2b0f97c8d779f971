"""A service that does, on request, each thing a runtime profile judges — run by the SDK
runner in a child process (``test_runtime_guard``), never imported by the test process.

Each route answers ``{"done": ...}`` when the operation went through and
``{"blocked": message}`` when the runtime guard refused it."""

from __future__ import annotations

import collections
import ctypes
import marshal
import os
import pickle
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh.sdk.guard import RuntimeViolation

#: Made before the guard is on: unpickling it names a class (collections.OrderedDict).
PICKLED = pickle.dumps(collections.OrderedDict(a=1))
MARSHALLED = marshal.dumps((1, 2))


def _connect(q: dict[str, str]) -> Any:
    with socket.create_connection((q["host"], int(q["port"])), timeout=5):
        return "connected"


def _lookup(q: dict[str, str]) -> Any:
    try:
        socket.getaddrinfo(q["host"], 443)
    except socket.gaierror:
        return "looked up (no answer)"
    return "looked up"


def _spawn(q: dict[str, str]) -> Any:
    return subprocess.run(["/bin/sh", "-c", "exit 7"], check=False).returncode


def _system(q: dict[str, str]) -> Any:
    return os.system("exit 0")  # noqa: S605


def _write(q: dict[str, str]) -> Any:
    with open(q["path"], "w") as file:
        file.write("x")
    return "written"


def _unpickle(q: dict[str, str]) -> Any:
    return list(pickle.loads(PICKLED).items())  # noqa: S301


def _unmarshal(q: dict[str, str]) -> Any:
    return marshal.loads(MARSHALLED)  # noqa: S302


def _eval(q: dict[str, str]) -> Any:
    return eval(q.get("expr", "6*7"))  # noqa: S307


def _dlopen(q: dict[str, str]) -> Any:
    ctypes.CDLL(None)
    return "loaded"


OPERATIONS: dict[str, Callable[[dict[str, str]], Any]] = {
    "connect": _connect,
    "lookup": _lookup,
    "spawn": _spawn,
    "system": _system,
    "write": _write,
    "unpickle": _unpickle,
    "unmarshal": _unmarshal,
    "eval": _eval,
    "dlopen": _dlopen,
}


async def operate(request: Request) -> JSONResponse:
    operation = OPERATIONS[request.path_params["name"]]
    try:
        return JSONResponse({"done": operation(dict(request.query_params))})
    except RuntimeViolation as exc:
        return JSONResponse({"blocked": str(exc)})


app = Starlette(routes=[Route("/do/{name}", operate)])
