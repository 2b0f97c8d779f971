"""Orders: reserves stock at inventory and charges at payments, over mTLS, by name."""

from __future__ import annotations

import secrets

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from trustmesh import sdk

app = FastAPI(title="orders", docs_url=None, redoc_url=None, openapi_url=None)

ORDERS: dict[str, dict[str, object]] = {}
PRICES = {"tea": 450, "mug": 1200, "kettle": 3900}


class OrderRequest(BaseModel):
    item: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=100)


@app.post("/orders", status_code=201)
async def create_order(request: OrderRequest) -> dict[str, object]:
    if request.item not in PRICES:
        raise HTTPException(404, "no such item")
    order_id = "ord_" + secrets.token_hex(6)
    inventory = await sdk.client("inventory")
    reserved = await inventory.post("/reservations", json=request.model_dump())
    if reserved.status != 201:
        raise HTTPException(409, f"inventory said {reserved.status}")
    payments = await sdk.client("payments")
    amount = PRICES[request.item] * request.quantity
    charged = await payments.post("/charges", json={"order_id": order_id, "amount_cents": amount})
    if charged.status != 201:
        raise HTTPException(402, f"payments said {charged.status}")
    ORDERS[order_id] = {
        "id": order_id,
        **request.model_dump(),
        "reservation": reserved.json()["id"],
        "charge": charged.json()["id"],
        "amount_cents": amount,
    }
    return ORDERS[order_id]


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, object]:
    if order_id not in ORDERS:
        raise HTTPException(404, "no such order")
    return ORDERS[order_id]
