"""One canonical form of a path, live: the shipped shop declaration and its policies (and
the README's example policies) behind a real gateway, users signed in at the provider,
and a bare upstream that records every request reaching it. Each operation a policy
denies someone is sent by that someone in every spelling a server might take for it — a
trailing slash, a doubled slash, another case, a needless escape — and none of them may
reach the upstream: the gateway refuses each one itself (400, 403, 404 or 405)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from authrig import sign_in_user
from edgerig import Edge, edge_stack
from liverig import GATEWAY, live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import trustmesh.config
from trustmesh.testing import RunningIdentityServer

SHIPPED = Path(trustmesh.config.__file__).parent
README = Path(__file__).parents[2] / "README.md"


def shop_section() -> str:
    """The packaged demo declaration's ``auth`` and ``gateway`` sections, as shipped."""
    shipped = yaml.safe_load((SHIPPED / "default.yaml").read_text())
    gateway = dict(shipped["gateway"])
    gateway.pop("metrics_port", None)
    gateway["policies"] = ["edge.cedar"]
    return yaml.safe_dump({"auth": shipped["auth"], "gateway": gateway}, sort_keys=False)


def readme_policies() -> str:
    """Every Cedar example of the README (written for the demo shop's routes)."""
    blocks = re.findall(r"```cedar\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README shows no edge policy"
    return "\n".join(blocks)


POLICY_SOURCES = {
    "shop.cedar": lambda: (SHIPPED / "shop.cedar").read_text(),
    "README": readme_policies,
}


def recorder(seen: list[tuple[str, str]]) -> Starlette:
    """The upstream: notes the method and raw path of whatever reaches it."""

    async def record(request: Request) -> JSONResponse:
        seen.append((request.method, request.scope["raw_path"].decode("latin-1")))
        return JSONResponse({"reached": request.url.path})

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{p:path}", record, methods=methods)])


SEEN: list[tuple[str, str]] = []


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(short_tmp, shop_section())


@pytest.fixture(params=sorted(POLICY_SOURCES))
async def shop(
    request: pytest.FixtureRequest, identity: RunningIdentityServer, short_tmp: Path
) -> AsyncIterator[Edge]:
    SEEN.clear()
    files = {
        "edge.cedar": POLICY_SOURCES[request.param](),
        "shop.openapi.yaml": (SHIPPED / "shop.openapi.yaml").read_text(),
    }
    async with edge_stack(identity, short_tmp, shop_section(), recorder(SEEN), files) as edge:
        for who, roles in (
            ("carol", ["customer"]),
            ("sam", ["support"]),
            ("root", ["admin"]),  # signs in with TOTP: mfa
        ):
            edge.tokens[who] = await asyncio.to_thread(
                sign_in_user, edge.rig, who, roles, audience=GATEWAY
            )
        yield edge


def spellings(path: str) -> list[str]:
    """Other spellings of ``path`` that some server, proxy or framework takes for it."""
    segments = path[1:].split("/")
    out = [path + "/", path + "//", "/" + path]
    for i in range(1, len(segments)):  # a doubled slash before each later segment
        out.append("/" + "/".join(segments[:i]) + "//" + "/".join(segments[i:]))
    for i, segment in enumerate(segments):  # each segment in other cases
        for other in (segment.upper(), segment.capitalize()):
            if other != segment:
                changed = [*segments[:i], other, *segments[i + 1 :]]
                out.append("/" + "/".join(changed))
                out.append("/" + "/".join(changed) + "/")
    out.append(path.upper())
    last = segments[-1]  # the last segment's first letter needlessly escaped
    out.append("/" + "/".join([*segments[:-1], f"%{ord(last[0]):02X}{last[1:]}"]))
    return out


#: Operations the shipped policies deny these users (method, canonical path, who).
DENIED = [
    ("POST", "/orders/ord_1/refund", "carol"),
    ("POST", "/orders/ord_1/refund", "sam"),
    ("POST", "/orders", "sam"),
    ("GET", "/admin/orders", "carol"),
    ("GET", "/admin/orders", "sam"),
]
JSON = [("Content-Type", "application/json")]


async def test_no_spelling_of_a_denied_operation_reaches_the_upstream(shop: Edge) -> None:
    # the rig can tell: an admin with MFA is let through, and the upstream records it
    assert (await shop.send("POST", "/orders/ord_1/refund", who="root")).status == 200
    assert (await shop.send("GET", "/admin/orders", who="root")).status == 200
    assert SEEN == [("POST", "/orders/ord_1/refund"), ("GET", "/admin/orders")]
    SEEN.clear()
    forwarded = [e.attributes for e in shop.sink.events if e.reason == "request-forwarded"]
    assert forwarded[0]["template"] == "/orders/{order_id}/refund"  # the event names it
    leaked: list[tuple[str, str, str, int]] = []
    for method, path, who in DENIED:
        assert (await shop.send(method, path, who=who)).status == 403, (method, path, who)
        for variant in spellings(path):
            status = (await shop.send(method, variant, who=who)).status
            if status not in (400, 403, 404, 405) or SEEN:
                leaked.append((who, method, variant, status))
                SEEN.clear()
    assert not leaked, leaked
