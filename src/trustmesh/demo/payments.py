"""Payments: charges (a pretend processor).

Its processor key comes from the secrets service (``sdk.secret``), never from its
configuration or environment; a card number is kept only as ciphertext of its own
transit key (``sdk.secrets().encrypt``), and a charge shows its last four digits."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from trustmesh import sdk
from trustmesh.errors import TrustmeshError

app = FastAPI(title="payments", docs_url=None, redoc_url=None, openapi_url=None)

CHARGES: dict[str, dict[str, object]] = {}
#: What the charge keeps of a card: its ciphertext, never its number.
CARD_CIPHERTEXTS: dict[str, str] = {}
PROCESSOR_SECRET = "payments/processor"  # noqa: S105 - where it is, not what


class Charge(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(ge=1, le=1_000_000)
    card_number: str | None = Field(default=None, pattern=r"^[0-9]{12,19}$")


async def _processor_reference(charge_id: str) -> str:
    """The processor's reference for a charge, signed with the processor key."""
    key = (await sdk.secret(PROCESSOR_SECRET))["api_key"]
    return hmac.new(str(key).encode(), charge_id.encode(), hashlib.sha256).hexdigest()[:20]


@app.post("/charges", status_code=201)
async def charge(request: Charge) -> dict[str, object]:
    charge_id = "ch_" + secrets.token_hex(6)
    try:
        reference = await _processor_reference(charge_id)
        if request.card_number is not None:
            sealed = await sdk.secrets().encrypt("payments", request.card_number.encode())
            CARD_CIPHERTEXTS[charge_id] = sealed
    except TrustmeshError as exc:
        raise HTTPException(503, f"the secrets service is unavailable: {exc.detail}") from None
    CHARGES[charge_id] = {
        "id": charge_id,
        "status": "succeeded",
        "order_id": request.order_id,
        "amount_cents": request.amount_cents,
        "processor_reference": reference,
        "card_last4": request.card_number[-4:] if request.card_number else None,
    }
    return CHARGES[charge_id]


@app.get("/charges/{charge_id}")
async def get_charge(charge_id: str) -> dict[str, object]:
    if charge_id not in CHARGES:
        raise HTTPException(404, "no such charge")
    return CHARGES[charge_id]
