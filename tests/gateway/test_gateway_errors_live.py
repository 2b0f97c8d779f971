"""An upstream's error answer, live: through a real gateway, a method the service does not
serve, a refusal and a failure come back in the gateway's own error shape, keeping the
headers a client needs (Allow, WWW-Authenticate, Retry-After) and nothing of the
framework's body; only a route that says so relays the service's own error body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from edgerig import Edge, edge_stack
from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from liverig import live_identity

from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  routes:
    - {path: /things, to: orders, auth: [anonymous], methods: [GET, POST]}
    - {path: /raw, to: orders, auth: [anonymous], methods: [GET, POST], relay_errors: true}
"""


def service() -> FastAPI:
    """The upstream: a FastAPI app (its own 405 body is the framework's)."""
    app = FastAPI()

    @app.post("/things/{thing}")
    @app.post("/raw/{thing}")
    async def change(thing: str) -> dict[str, str]:
        return {"changed": thing}

    @app.get("/things/status/{code}")
    @app.get("/raw/status/{code}")
    async def status(code: int) -> Response:
        headers = {
            "Retry-After": "7",
            "WWW-Authenticate": 'Bearer error="invalid_token"',
            "X-Debug-Query": "SELECT * FROM users",
            "Set-Cookie": "trace=1",
        }
        body = "Traceback (most recent call last): password=hunter2" if code >= 400 else "fine"
        return PlainTextResponse(body, status_code=code, headers=headers)

    return app


#: The tests only send requests: they share one stack, on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(module_tmp, SECTION)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Edge]:
    async with edge_stack(identity, module_tmp, SECTION, service()) as running:
        yield running


async def test_a_method_the_service_does_not_serve_is_the_gateways_answer(edge: Edge) -> None:
    answer = await edge.send("GET", "/things/t1")
    assert answer.status == 405
    assert json.loads(answer.body) == {
        "error": "method_not_allowed",
        "message": "the service does not allow this method here",
    }
    assert answer.header("allow") == "POST"
    assert answer.header("content-type") == "application/json"
    assert answer.header("strict-transport-security")
    # where the route says so, the service's own body is relayed as it is
    raw = await edge.send("GET", "/raw/t1")
    assert raw.status == 405
    assert json.loads(raw.body) == {"detail": "Method Not Allowed"}
    assert raw.header("allow") == "POST"


@pytest.mark.parametrize(
    ("code", "error", "kept"),
    [
        (401, "unauthenticated", "www-authenticate"),
        (404, "not_found", None),
        (409, "conflict", None),
        (429, "rate_limited", "retry-after"),
        (500, "service_error", None),
        (503, "unavailable", "retry-after"),
    ],
)
async def test_an_error_keeps_its_status_and_the_headers_that_matter(
    edge: Edge, code: int, error: str, kept: str | None
) -> None:
    answer = await edge.send("GET", f"/things/status/{code}")
    assert answer.status == code
    body = json.loads(answer.body)
    assert body["error"] == error
    assert set(body) == {"error", "message"}
    assert b"hunter2" not in answer.body
    names = {k for k, _ in answer.headers}
    assert "x-debug-query" not in names
    assert "set-cookie" not in names
    if kept is not None:
        assert answer.header(kept) is not None, kept
    raw = await edge.send("GET", f"/raw/status/{code}")
    assert raw.status == code
    assert b"hunter2" in raw.body  # relayed as it is, where the route says so


async def test_a_success_is_relayed_as_it_is(edge: Edge) -> None:
    answer = await edge.send("GET", "/things/status/200")
    assert (answer.status, answer.body) == (200, b"fine")
    assert answer.header("set-cookie") == "trace=1"
