"""Payments: charges (a pretend processor)."""

from __future__ import annotations

import secrets

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

app = FastAPI(title="payments", docs_url=None, redoc_url=None, openapi_url=None)

CHARGES: dict[str, dict[str, object]] = {}


class Charge(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=1, le=1_000_000)


@app.post("/charges", status_code=201)
async def charge(request: Charge) -> dict[str, object]:
    charge_id = "ch_" + secrets.token_hex(6)
    CHARGES[charge_id] = {"id": charge_id, "status": "succeeded", **request.model_dump()}
    return CHARGES[charge_id]


@app.get("/charges/{charge_id}")
async def get_charge(charge_id: str) -> dict[str, object]:
    if charge_id not in CHARGES:
        raise HTTPException(404, "no such charge")
    return CHARGES[charge_id]
