"""The SDK's token check (goal: ≥ 100,000/s for a cached token; the uncached ES256 figure
reported), against a bare PyJWT ``decode`` of the same token measured in the same run.

Run: ``.venv/bin/python benchmarks/token_check.py [--seconds 4]``

- cached: the same verified token again (what a keep-alive caller sends), with the
  binding, expiry and revocation checked each time;
- uncached: a different token each time (signature, JWKS lookup, every claim check);
- baseline: ``jwt.decode`` with the key in hand, no further checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import jwt

from trustmesh import crypto
from trustmesh.sdk.tokens import JWKSCache, TokenVerifier

ISSUER = "https://127.0.0.1:1"
AUDIENCE = "spiffe://bench.example/payments"
THUMB = "t" * 43


async def main(seconds: float) -> None:
    key = crypto.generate_key()
    kid = crypto.key_id(key.public_key())
    jwk = crypto.public_jwk(key.public_key())
    jwk.update(kid=kid, alg="ES256", use="sig")
    body = json.dumps({"keys": [jwk]}).encode()

    async def fetch() -> tuple[bytes, float | None]:
        return body, 300.0

    verifier = TokenVerifier(issuers={ISSUER}, audience=AUDIENCE, jwks=JWKSCache(fetch))

    def token(n: int) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "spiffe://bench.example/orders",
            "aud": AUDIENCE,
            "exp": now + 900,
            "iat": now,
            "jti": f"j{n}",
            "client_id": "orders",
            "cnf": {"x5t#S256": THUMB},
        }
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})

    tokens = [token(n) for n in range(20_000)]
    one = tokens[0]
    await verifier.verify(one, peer_thumbprint=THUMB)

    count, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(1000):
            await verifier.verify(one, peer_thumbprint=THUMB)
        count += 1000
    cached = count / (time.perf_counter() - start)

    count, start = 0, time.perf_counter()
    for t in tokens[1:]:
        await verifier.verify(t, peer_thumbprint=THUMB)
        count += 1
        if time.perf_counter() - start > seconds:
            break
    uncached = count / (time.perf_counter() - start)

    public = key.public_key()
    count, start = 0, time.perf_counter()
    for t in tokens[1:]:
        jwt.decode(t, public, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
        count += 1
        if time.perf_counter() - start > seconds:
            break
    baseline = count / (time.perf_counter() - start)

    print(
        f"cached token check      {cached:10.0f} /s   {cached / 100_000:.2f}x of the 100,000/s goal"
    )
    print(
        f"uncached ES256 check    {uncached:10.0f} /s   {uncached / baseline:.2f}x of bare PyJWT decode"
    )
    print(f"bare PyJWT decode       {baseline:10.0f} /s   (baseline)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    asyncio.run(main(parser.parse_args().seconds))
