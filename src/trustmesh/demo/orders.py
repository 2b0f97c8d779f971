"""Orders: reserves stock at inventory and charges at payments, over mTLS, by name, on
behalf of whoever placed the order (token exchange). Object-level authorization with
Cedar: an order can be read by its owner, and by support and admins; only an admin may
refund one. ``GET /orders`` lists the caller's own orders — and every order for support
and admins, who may read any (shop.cedar: "support reads any order"). (The gateway's
policies decide first, per operation; these decide per order.)

``GET /admin/reachability?host=…&port=…`` (admins only) tells whether orders can open a
TCP connection to a host: a diagnostic that, like every such feature, could be turned
into a probe of the network (SSRF). The service's enforced runtime profile
(``runtime:`` in the declaration, :mod:`trustmesh.sdk.guard`) confines it to the
destinations declared: any other is refused in the process, recorded, and alerted on."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from trustmesh import sdk

app = FastAPI(title="orders", docs_url=None, redoc_url=None, openapi_url=None)

ORDERS: dict[str, dict[str, object]] = {}
PRICES = {"tea": 450, "mug": 1200, "kettle": 3900}

#: Who may do what to an order: its owner, support and admins may read it; admins refund.
POLICY = sdk.ObjectPolicy(
    """
    @id("owner-reads-order")
    permit(principal, action == Action::"read", resource is Order)
      when { resource.owner == principal };

    @id("staff-read-orders")
    permit(principal, action == Action::"read", resource is Order)
      when { principal.roles.contains("support") || principal.roles.contains("admin") };

    @id("staff-list-orders")
    permit(principal, action == Action::"list", resource is Order)
      when { principal.roles.contains("support") || principal.roles.contains("admin") };

    @id("admins-diagnose")
    permit(principal, action == Action::"diagnose", resource is Shop)
      when { principal.roles.contains("admin") };

    @id("admins-refund")
    permit(principal, action == Action::"refund", resource is Order)
      when { principal.roles.contains("admin") };
    """
)


class OrderRequest(BaseModel):
    item: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=100)
    #: Passed to payments, which keeps it only as ciphertext; orders keeps nothing of it.
    card_number: str | None = Field(default=None, pattern=r"^[0-9]{12,19}$")


def _owner(http: Request) -> str:
    token = sdk.request_token(http)
    if token is not None:
        return token.subject
    tls = http.scope.get("extensions", {}).get("tls", {})
    return str(tls.get("spiffe_id"))  # no identity provider: the calling workload


async def _client(name: str, http: Request) -> sdk.ServiceClient | sdk.OnBehalfClient:
    if sdk.request_token(http) is not None:
        return await sdk.client(name, on_behalf_of=http)
    return await sdk.client(name)


@app.post("/orders", status_code=201)
async def create_order(request: OrderRequest, http: Request) -> dict[str, object]:
    if request.item not in PRICES:
        raise HTTPException(404, "no such item")
    try:
        return await _place(request, http)
    except (sdk.UnavailableError, sdk.AuthenticationError) as exc:
        # a callee or the identity provider (on-behalf-of tokens) is unreachable
        raise HTTPException(503, f"temporarily unavailable: {exc.detail}") from None


async def _place(request: OrderRequest, http: Request) -> dict[str, object]:
    order_id = "ord_" + secrets.token_hex(6)
    inventory = await _client("inventory", http)
    reserved = await inventory.post(
        "/reservations", json=request.model_dump(include={"item", "quantity"})
    )
    if reserved.status != 201:
        raise HTTPException(409, f"inventory said {reserved.status}")
    payments = await _client("payments", http)
    amount = PRICES[request.item] * request.quantity
    charge = {"order_id": order_id, "amount_cents": amount, "card_number": request.card_number}
    charged = await payments.post("/charges", json=charge)
    if charged.status != 201:
        raise HTTPException(402, f"payments said {charged.status}")
    ORDERS[order_id] = {
        "id": order_id,
        **request.model_dump(exclude={"card_number"}),
        "owner": _owner(http),
        "reservation": reserved.json()["id"],
        "charge": charged.json()["id"],
        "amount_cents": amount,
    }
    return ORDERS[order_id]


def _order(order_id: str, http: Request, action: str) -> dict[str, object]:
    order = ORDERS.get(order_id)
    # the same answer for "not yours" and "not there" would hide existence; the owner
    # check comes first so that a stranger learns nothing either way
    owner = str(order["owner"]) if order else ""
    if not sdk.authorize(http, POLICY, action, "Order", order_id, owner=sdk.User(owner)):
        raise HTTPException(403, "forbidden")
    if order is None:
        raise HTTPException(404, "no such order")
    return order


@app.get("/orders")
async def list_orders(http: Request) -> dict[str, object]:
    """The caller's own orders; support and admins (``list``) see every order."""
    if sdk.authorize(http, POLICY, "list", "Order", "*", owner=sdk.User("")):
        mine = list(ORDERS.values())
    else:
        caller = _owner(http)
        mine = [order for order in ORDERS.values() if order["owner"] == caller]
    return {"orders": sorted(mine, key=lambda o: str(o["id"]))}


@app.get("/orders/{order_id}")
async def get_order(order_id: str, http: Request) -> dict[str, object]:
    return _order(order_id, http, "read")


@app.post("/orders/{order_id}/refund")
async def refund_order(order_id: str, http: Request) -> dict[str, object]:
    order = _order(order_id, http, "refund")
    if order.get("refunded"):
        raise HTTPException(409, "already refunded")
    order["refunded"] = True
    return order


@app.get("/admin/orders")
async def all_orders(http: Request) -> dict[str, object]:
    """Every order, for admins (the gateway admits only admins signed in with MFA)."""
    if not sdk.authorize(http, POLICY, "list", "Order", "*", owner=sdk.User("")):
        raise HTTPException(403, "forbidden")
    return {"orders": sorted(ORDERS.values(), key=lambda o: str(o["id"]))}


@app.get("/admin/reachability")
async def reachability(
    http: Request,
    host: str = Query(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$"),
    port: int = Query(ge=1, le=65535),
) -> dict[str, object]:
    """Whether orders reaches ``host:port`` (admins: the gateway admits only admins signed
    in with MFA, and so does this check). What the runtime profile does not declare is
    refused before any packet leaves: ``refused`` says so."""
    if not sdk.authorize(http, POLICY, "diagnose", "Shop", "reachability"):
        raise HTTPException(403, "forbidden")
    answer: dict[str, object] = {"host": host, "port": port, "reachable": False}
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=3)
    except PermissionError as exc:  # the runtime guard (sdk.guard.RuntimeViolation)
        answer["refused"] = str(exc)
    except (OSError, TimeoutError):
        pass
    else:
        writer.close()
        answer["reachable"] = True
    return answer
