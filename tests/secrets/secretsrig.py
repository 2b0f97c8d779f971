"""A secrets service for tests: the real service over mTLS on 127.0.0.1, an identity
service in a thread, and the SVIDs of payments, orders and the operator as PEM files that
``hvac`` (unmodified: only its ``requests`` session is given) presents."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import spiffe_http

from trustmesh import events
from trustmesh.config import TrustmeshConfig, parse_config
from trustmesh.sdk.x509source import X509Source
from trustmesh.secrets.server import RunningSecrets, serve_secrets
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "secrets.example"
PAYMENTS = f"spiffe://{TD}/payments"
ORDERS = f"spiffe://{TD}/orders"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"
SECRETS = f"spiffe://{TD}/trustmesh/secrets"

CONFIG = f"""
trust_domain: {TD}
dev: true
services:
  payments: {{external: true}}
  orders: {{external: true}}
secrets:
  policies:
    - identity: payments
      allow:
        "secret/data/payments/*": [create, read, update, delete, patch]
        "secret/metadata/payments/*": [read, list, update, delete]
        "secret/delete/payments/*": [update]
        "secret/undelete/payments/*": [update]
        "secret/destroy/payments/*": [update]
        "secret/data/payments/forbidden": [deny]
        "transit/encrypt/payments": [create, update]
        "transit/decrypt/payments": [update]
        "transit/rewrap/payments": [update]
        "transit/datakey/+/payments": [update]
        "transit/keys/payments": [read]
    - identity: operator
      allow:
        "secret/*": [create, read, update, delete, list, patch]
        "sys/*": [read, update]
        "transit/*": [create, read, update, delete, list]
        "database/*": [create, read, update, delete, list]
"""


def secrets_config(text: str = CONFIG, **replace: str) -> TrustmeshConfig:
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_config(text, source="test.yaml")


class Workload(spiffe_http.Workload):
    def client(self, url: str, token: str | None = None) -> hvac.Client:
        """An unmodified hvac client presenting this SVID."""
        return hvac.Client(
            url=url,
            token=token,
            cert=(str(self.cert), str(self.key)),
            verify=str(self.bundle),
            session=self.session(),
            timeout=10,
        )


def identity_for(
    config: TrustmeshConfig, where: Path, **server: Any
) -> Iterator[RunningIdentityServer]:
    """``server``: IdentityServer options (``discovery=True``: its suspensions feed)."""
    with identity_server_in_thread(config, where, **server) as running:
        exe = os.readlink("/proc/self/exe")
        for spiffe_id in (PAYMENTS, ORDERS, OPERATOR, SECRETS):
            running.call(
                running.server.service.register,
                spiffe_id,
                [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
                None,
            )
        yield running


async def workload(identity: RunningIdentityServer, spiffe_id: str, where: Path) -> Workload:
    return await spiffe_http.workload(identity.address, spiffe_id, where, Workload)


@dataclass
class SecretsRig:
    running: RunningSecrets
    sink: events.MemorySink
    payments: Workload
    orders: Workload
    operator: Workload
    state: Path
    identity: RunningIdentityServer
    config: TrustmeshConfig

    @property
    def url(self) -> str:
        return self.running.url

    def login(self, who: Workload) -> hvac.Client:
        """``who``'s hvac client, logged in with cert auth."""
        client = who.client(self.url)
        client.auth.cert.login()
        return client

    def audit_lines(self) -> list[str]:
        return (self.state / "secrets" / "audit.jsonl").read_text().splitlines()


@contextlib.asynccontextmanager
async def secrets_rig(
    identity: RunningIdentityServer, state: Path, config: TrustmeshConfig, **serve: Any
) -> AsyncIterator[SecretsRig]:
    sink = events.MemorySink()
    source = X509Source(identity.address, spiffe_id=SECRETS)
    await source.start()
    running = await serve_secrets(config, state, source=source, sink=sink, **serve)
    people = [await workload(identity, i, state / "pki") for i in (PAYMENTS, ORDERS, OPERATOR)]
    try:
        yield SecretsRig(running, sink, *people, state, identity, config)
    finally:
        await running.stop()
        for who in people:
            await who.source.close()
        await source.close()
