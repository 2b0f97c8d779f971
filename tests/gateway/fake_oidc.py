"""Another OpenID Provider, at the far edge of the tests: OIDC discovery and a JWKS over
server-authenticated TLS (a certificate from the dev edge CA), RSA keys made at run time,
and tokens signed the way Keycloak signs them (RS256, roles under realm_access)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustmesh import crypto
from trustmesh.platform.listeners import PublicServed, start_public


@dataclass
class FakeIssuer:
    state: Path
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    issuer_override: str | None = None  # discovery that names another issuer
    served: PublicServed | None = None
    jwks_fetches: int = 0

    @property
    def url(self) -> str:
        assert self.served is not None
        return f"https://127.0.0.1:{self.served.port}/realms/shop"

    @property
    def ca_file(self) -> Path:
        return crypto.edge_ca_path(self.state)

    def declaration(self, **trust: str) -> str:
        """This issuer's entry in ``gateway.issuers`` (a flow mapping) for the tokens it
        signs (audience ``shop-api``, roles under ``realm_access``), with ``trust``: more
        keys and their YAML values."""
        more = "".join(f", {key}: {value}" for key, value in trust.items())
        return (
            f'{{issuer: "{self.url}", audience: shop-api, ca_file: "{self.ca_file}",'
            f" roles_claim: realm_access.roles{more}}}"
        )

    def new_key(self) -> str:
        kid = uuid.uuid4().hex[:12]
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    def token(self, kid: str | None = None, **claims: Any) -> str:
        kid = kid or next(iter(self.keys))
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": "shop-api",
            "sub": "kc-user-1",
            "azp": "shop-spa",
            "iat": now,
            "exp": now + 300,
            "preferred_username": "kim",
            "realm_access": {"roles": ["customer"]},
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def app(self) -> Starlette:
        async def metadata(_: Request) -> Response:
            return Response(
                json.dumps(
                    {
                        "issuer": self.issuer_override or self.url,
                        "jwks_uri": self.url + "/protocol/openid-connect/certs",
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                ),
                media_type="application/json",
            )

        async def certs(_: Request) -> Response:
            self.jwks_fetches += 1
            keys = []
            for kid, key in self.keys.items():
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
            return Response(json.dumps({"keys": keys}), media_type="application/json")

        return Starlette(
            routes=[
                Route("/realms/shop/.well-known/openid-configuration", metadata),
                Route("/realms/shop/protocol/openid-connect/certs", certs),
            ]
        )


@contextlib.asynccontextmanager
async def fake_issuer(state: Path) -> AsyncIterator[FakeIssuer]:
    seal_key = crypto.load_seal_key(state, dev=True)
    certificate = crypto.server_certificate(state, seal_key, None, dev=True)
    assert certificate is not None
    issuer = FakeIssuer(state)
    issuer.new_key()
    issuer.served = await start_public(
        issuer.app(), chain_pem=certificate.chain_pem(), key_pem=certificate.key_pem()
    )
    try:
        yield issuer
    finally:
        await issuer.served.stop()
