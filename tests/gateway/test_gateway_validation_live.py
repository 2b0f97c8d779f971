"""Request validation at a live gateway: a route's OpenAPI document and another's JSON
Schema, compiled when the gateway starts; every refusal is answered by the gateway
(400 naming where and the rule, never the value; 415 for a content type the contract
does not take), recorded, and never reaches the upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from edgerig import Edge, edge_stack
from liverig import live_identity
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.gateway.validation import load_validators
from trustmesh.testing import RunningIdentityServer

SECTION = """gateway:
  routes:
    - path: /orders
      to: orders
      auth: [anonymous]
      methods: [GET, POST]
      paths: ["/orders", "GET /orders/{id}", "POST /orders/{id}/notes", "POST /orders/{id}/form"]
      openapi: orders.openapi.yaml
    - {path: /items, to: orders, auth: [anonymous], methods: [GET, POST, PUT],
       schema: item.schema.json}
    - {path: /free, to: orders, auth: [anonymous], methods: [POST]}
"""
OPENAPI = """
openapi: 3.0.3
info: {title: orders, version: "1"}
paths:
  /orders:
    get:
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
        - {name: status, in: query, schema: {type: string, enum: [open, paid]}}
        - {name: tag, in: query, schema: {type: array, items: {type: string, maxLength: 8}}}
        - {name: x-request-id, in: header, required: true, schema: {type: string, format: uuid}}
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Order"}
  /orders/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: string, pattern: "^ord_[0-9]+$"}}
  /orders/{id}/notes:
    post:
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
      requestBody:
        content:
          text/plain: {}
  /orders/{id}/form:
    post:
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
      requestBody:
        content:
          application/x-www-form-urlencoded:
            schema:
              type: object
              required: [qty]
              properties:
                qty: {type: integer, minimum: 1}
                gift: {type: boolean}
components:
  schemas:
    Order:
      type: object
      additionalProperties: false
      required: [item, quantity]
      properties:
        item: {type: string, minLength: 1, maxLength: 32}
        quantity: {type: integer, minimum: 1, maximum: 10}
        note: {type: string, nullable: true}
        lines:
          type: array
          maxItems: 3
          items: {type: object, properties: {sku: {type: string}}, required: [sku]}
"""
ITEM = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "maxLength": 16}},
}
UUID = "6f1d2c0e-3b7a-4c59-9a8e-2d5b1f7c4e90"
JSON_TYPE = [("Content-Type", "application/json")]


def recorder(seen: list[tuple[str, str, bytes]]) -> Starlette:
    async def record(request: Request) -> JSONResponse:
        seen.append((request.method, request.scope["raw_path"].decode(), await request.body()))
        return JSONResponse({"reached": True})

    return Starlette(routes=[Route("/{p:path}", record, methods=["GET", "POST", "PUT"])])


SEEN: list[tuple[str, str, bytes]] = []


#: The live tests only send requests: they share one stack, on the module's loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def identity(module_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from live_identity(module_tmp, SECTION)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_edge(identity: RunningIdentityServer, module_tmp: Path) -> AsyncIterator[Edge]:
    files = {"orders.openapi.yaml": OPENAPI, "item.schema.json": json.dumps(ITEM)}
    async with edge_stack(identity, module_tmp, SECTION, recorder(SEEN), files) as running:
        yield running


@pytest.fixture
def edge(shared_edge: Edge) -> Edge:
    """The module's stack, with nothing yet seen by its upstream or recorded by its
    gateway in this test."""
    SEEN.clear()
    shared_edge.sink.events.clear()
    return shared_edge


def order(**fields: object) -> bytes:
    return json.dumps({"item": "tea", "quantity": 2, **fields}).encode()


#: (method, path, headers, body) → (status, location, rule)
REFUSED = [
    # query and header parameters
    ("GET", "/orders?limit=0", [("X-Request-Id", UUID)], b"", 400, "query.limit", "minimum"),
    ("GET", "/orders?limit=ten", [("X-Request-Id", UUID)], b"", 400, "query.limit", "type"),
    ("GET", "/orders?status=lost", [("X-Request-Id", UUID)], b"", 400, "query.status", "enum"),
    (
        "GET",
        "/orders?tag=a&tag=waytoolong",
        [("X-Request-Id", UUID)],
        b"",
        400,
        "query.tag",
        "maxLength",
    ),
    ("GET", "/orders", [], b"", 400, "header.x-request-id", "required"),
    ("GET", "/orders", [("X-Request-Id", "not-a-uuid")], b"", 400, "header.x-request-id", "format"),
    # path parameters
    ("GET", "/orders/42", [], b"", 400, "path.id", "pattern"),
    # JSON bodies
    ("POST", "/orders", JSON_TYPE, order(quantity=0), 400, "body/quantity", "minimum"),
    ("POST", "/orders", JSON_TYPE, order(quantity="2"), 400, "body/quantity", "type"),
    ("POST", "/orders", JSON_TYPE, b'{"item": "tea"}', 400, "body/quantity", "required"),
    ("POST", "/orders", JSON_TYPE, order(admin=True), 400, "body", "additionalProperties"),
    (
        "POST",
        "/orders",
        JSON_TYPE,
        order(lines=[{"sku": "a"}, {}]),
        400,
        "body/lines/1/sku",
        "required",
    ),
    ("POST", "/orders", JSON_TYPE, order(note=3), 400, "body/note", "type"),
    ("POST", "/orders", JSON_TYPE, b"", 400, "body", "required"),
    # the JSON itself: what two parsers could read differently
    (
        "POST",
        "/orders",
        JSON_TYPE,
        b'{"item": "tea", "quantity": 2, "quantity": 9}',
        400,
        "body",
        "duplicate-key",
    ),
    (
        "POST",
        "/orders",
        JSON_TYPE,
        b'{"item": "tea", "quantity": NaN}',
        400,
        "body",
        "not-json-number",
    ),
    ("POST", "/orders", JSON_TYPE, b'{"item": "tea", "quantity": 2', 400, "body", "not-json"),
    (
        "POST",
        "/orders",
        JSON_TYPE,
        b'{"item": "tea", "quantity": 1' + b"0" * 80 + b"}",
        400,
        "body",
        "number-too-long",
    ),
    (
        "POST",
        "/orders",
        JSON_TYPE,
        b'{"lines": ' + b"[" * 40 + b"]" * 40 + b"}",
        400,
        "body/lines/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0",
        "too-deep",
    ),
    (
        "POST",
        "/orders",
        JSON_TYPE,
        b'\xef\xbb\xbf{"item": "tea", "quantity": 2}',
        400,
        "body",
        "byte-order-mark",
    ),
    # forms, read as the service reads them
    (
        "POST",
        "/orders/o1/form",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"qty=0",
        400,
        "body/qty",
        "minimum",
    ),
    (
        "POST",
        "/orders/o1/form",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"qty=1&qty=2",
        400,
        "body/qty",
        "repeated",
    ),
    (
        "POST",
        "/orders/o1/form",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"gift=yes&qty=1",
        400,
        "body/gift",
        "type",
    ),
    # a body where the operation describes none
    ("GET", "/orders/ord_1", JSON_TYPE, b"{}", 400, "body", "no-body-expected"),
    # the JSON Schema route
    ("POST", "/items", JSON_TYPE, b'{"name": 7}', 400, "body/name", "type"),
    ("PUT", "/items", JSON_TYPE, b"{}", 400, "body/name", "required"),
    ("GET", "/items", JSON_TYPE, b'{"name": "x"}', 400, "body", "no-body-expected"),
]
UNSUPPORTED = [
    ("POST", "/orders", [("Content-Type", "text/plain")], order()),
    ("POST", "/orders", [], order()),
    ("POST", "/orders/o1/notes", JSON_TYPE, b"{}"),
    ("POST", "/items", [("Content-Type", "application/x-www-form-urlencoded")], b"name=x"),
]


@on_module_loop
@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "location", "rule"),
    REFUSED,
    ids=[f"{c[0]} {c[1][:30]} {c[6]}" for c in REFUSED],
)
async def test_a_request_that_breaks_its_contract_is_refused_at_the_edge(
    edge: Edge,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    status: int,
    location: str,
    rule: str,
) -> None:
    answer = await edge.send(method, path, headers=headers, body=body)
    assert answer.status == status, answer.body
    doc = json.loads(answer.body)
    assert doc["error"] == "invalid_request"
    assert (doc["location"], doc["rule"]) == (location, rule)
    assert SEEN == []  # the upstream never saw it
    (event,) = [e for e in edge.sink.events if e.reason.value == "request-invalid"]
    assert event.attributes["violation"] == f"{location} {rule}"
    # never the offending value: the answer holds nothing of the request's own text
    for value in ("waytoolong", "not-a-uuid", "lost", "ten", "yes", "admin"):
        if value.encode() in body or value in path or any(value in v for _, v in headers):
            assert value.encode() not in answer.body


@on_module_loop
@pytest.mark.parametrize(("method", "path", "headers", "body"), UNSUPPORTED)
async def test_a_content_type_the_contract_does_not_take_is_415(
    edge: Edge, method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    answer = await edge.send(method, path, headers=headers, body=body)
    assert answer.status == 415, answer.body
    assert json.loads(answer.body)["error"] == "unsupported_media_type"
    assert SEEN == []
    assert "media-type-unsupported" in edge.reasons()


@on_module_loop
async def test_requests_that_keep_their_contract_reach_the_service(edge: Edge) -> None:
    uuid = [("X-Request-Id", UUID)]
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    sent = [
        ("GET", "/orders?limit=5&status=open&tag=a&tag=b", uuid, b""),
        ("GET", "/orders", uuid, b""),
        ("GET", "/orders/ord_7", [], b""),
        ("POST", "/orders", JSON_TYPE, order(note=None, lines=[{"sku": "tea-1"}])),
        ("POST", "/orders", [("Content-Type", "application/json; charset=utf-8")], order()),
        ("POST", "/orders/o1/notes", [("Content-Type", "text/plain")], b"leave at the door"),
        ("POST", "/orders/o1/form", form, b"qty=2&gift=true"),
        ("POST", "/items", JSON_TYPE, b'{"name": "tea"}'),
        ("GET", "/items", [], b""),
        ("POST", "/free", [("Content-Type", "text/plain")], b"no contract here"),
    ]
    for method, path, headers, body in sent:
        answer = await edge.send(method, path, headers=headers, body=body)
        assert answer.status == 200, (path, answer.body)
    assert [(m, p) for m, p, _ in SEEN] == [(m, p.split("?")[0]) for m, p, _, _ in sent]
    assert SEEN[3][2] == sent[3][3]  # the body goes on as it came


def _gateway(section: str) -> object:
    text = "trust_domain: v.example\ndev: true\nservices:\n  orders: {external: true}\n" + section
    return parse_config(text, source="test.yaml").gateway


@pytest.mark.parametrize(
    ("routes", "files", "problem"),
    [
        (
            "- {path: /orders, to: orders, auth: [anonymous], openapi: api.yaml}",
            {"api.yaml": OPENAPI},
            "list the route's operations in paths",
        ),
        (
            "- {path: /orders, to: orders, auth: [anonymous], paths: ['/orders/{id}/x'], "
            "openapi: api.yaml}",
            {"api.yaml": OPENAPI},
            "not described",
        ),
        (
            "- {path: /orders, to: orders, auth: [anonymous], paths: [/orders], openapi: api.yaml}",
            {"api.yaml": "openapi: 2.0\npaths: {}\n"},
            "OpenAPI 3.0 or 3.1 expected",
        ),
        (
            "- {path: /orders, to: orders, auth: [anonymous], paths: ['POST /orders'], "
            "methods: [POST], openapi: api.yaml}",
            {"api.yaml": OPENAPI.replace('"#/components/schemas/Order"', "https://x/o.json")},
            "only local references",
        ),
        (
            "- {path: /items, to: orders, auth: [anonymous], schema: missing.json}",
            {},
            "cannot read",
        ),
        (
            "- {path: /items, to: orders, auth: [anonymous], schema: bad.json}",
            {"bad.json": '{"type": "strange"}'},
            "not a schema",
        ),
    ],
)
def test_a_contract_that_cannot_be_compiled_stops_the_gateway_at_start(
    tmp_path: Path, routes: str, files: dict[str, str], problem: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    gateway = _gateway("gateway:\n  routes:\n    " + routes + "\n")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_validators(gateway, tmp_path)  # type: ignore[arg-type]
    assert "gateway.routes[0]" in str(caught.value)
