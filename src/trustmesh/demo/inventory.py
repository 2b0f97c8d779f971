"""Inventory: stock levels and reservations."""

from __future__ import annotations

import secrets

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

app = FastAPI(title="inventory", docs_url=None, redoc_url=None, openapi_url=None)

STOCK: dict[str, int] = {"tea": 40, "mug": 12, "kettle": 3}
RESERVATIONS: dict[str, dict[str, object]] = {}


class Reservation(BaseModel):
    item: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=100)


@app.get("/items/{item}")
async def get_item(item: str) -> dict[str, object]:
    if item not in STOCK:
        raise HTTPException(404, "no such item")
    return {"item": item, "in_stock": STOCK[item]}


@app.post("/reservations", status_code=201)
async def reserve(reservation: Reservation) -> dict[str, object]:
    available = STOCK.get(reservation.item)
    if available is None:
        raise HTTPException(404, "no such item")
    if available < reservation.quantity:
        raise HTTPException(409, "not enough stock")
    STOCK[reservation.item] = available - reservation.quantity
    reservation_id = "res_" + secrets.token_hex(6)
    RESERVATIONS[reservation_id] = reservation.model_dump()
    return {"id": reservation_id, **reservation.model_dump()}
