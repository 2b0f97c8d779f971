"""What the console's tests share: an injectable clock, the declaration they run
against, the identity provider's real signing keys and ID tokens signed with them, and
a fake provider at the far edge (its token endpoint and JWKS) that hands them out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trustmesh import crypto
from trustmesh.audit.console.sessions import Pending
from trustmesh.config import TrustmeshConfig, parse_config

NOW = 1_900_000_000
PUBLIC_URL = "https://127.0.0.1:8443"
ISSUER = "https://auth.shop.example"
CLIENT_ID = "trustmesh-console"

#: The provider's signing key, and a key it never published (an attacker's).
PROVIDER_KEY = crypto.generate_key()
KID = crypto.key_id(PROVIDER_KEY.public_key())
ATTACKER_KEY = crypto.generate_key()

DECLARATION = """trust_domain: shop.example
dev: true
services:
  orders: {run: "shop.orders:app"}
  payments: {run: "shop.payments:app"}
  ledger: {run: "shop.ledger:app"}
gateway:
  routes:
    - {path: /orders, to: orders, methods: [GET, POST]}
    - {path: /pay, to: payments, paths: ['/pay/{id}']}
calls:
  - {from: orders, to: payments, allow: ["POST /charges", "GET /charges/{id}"]}
  - {from: payments, to: ledger, allow: ["POST /entries"]}
"""


def shop() -> TrustmeshConfig:
    return parse_config(DECLARATION, source="trustmesh.yaml")


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, now: float = NOW) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admin_claims(nonce: str, /, **overrides: Any) -> dict[str, Any]:
    """An ID token's claims for alice, an admin who signed in with a TOTP code
    (``None`` as a value: the claim left out)."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "u-alice",
        "preferred_username": "alice",
        "exp": NOW + 300,
        "iat": NOW,
        "auth_time": NOW - 10,
        "nonce": nonce,
        "roles": ["admin"],
        "amr": ["pwd", "otp"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def id_token(
    claims: Mapping[str, Any], key: crypto.PrivateKey = PROVIDER_KEY, kid: str = KID
) -> str:
    return crypto.sign_jwt(claims, key, kid=kid)


class FakeProvider:
    """The identity provider at the far edge: where it is, its token endpoint (answering
    what the test set, noting each form), and its published keys (by kid)."""

    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = {}
        self.keys: dict[str, Any] = {KID: PROVIDER_KEY.public_key()}
        self.forms: list[dict[str, str]] = []
        self.asked: list[str] = []

    def answer(self, token: str | None, status: int = 200, **extra: Any) -> None:
        body: dict[str, Any] = {"access_token": "opaque", "token_type": "Bearer", **extra}
        if token is not None:
            body["id_token"] = token
        self.status, self.body = status, body

    async def where(self) -> tuple[str, str]:
        return PUBLIC_URL, ISSUER

    async def redeem(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        self.forms.append(dict(form))
        return self.status, self.body

    async def key(self, kid: str) -> Any | None:
        self.asked.append(kid)
        return self.keys.get(kid)


def pending(nonce: str = "n-0123456789abcdef", state: str = "s-0123456789abcdef") -> Pending:
    return Pending(state, nonce, "v" * 43 + "-._~0123456789", float(NOW))
