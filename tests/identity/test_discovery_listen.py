"""Discovery bound to every IPv6 address (``listen: {host: "::"}``): the SDK's client
reaches it at an IPv6 address of this machine that is not loopback and at ``::1``; the
URL the identity service gives (its ``discovery.json``, which ``up`` hands every service)
names ``[::1]``, in brackets."""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

import pytest
from addresses import machine_address

from trustmesh import crypto
from trustmesh.config import parse_config
from trustmesh.sdk.discovery import DiscoveryClient
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import identity_server_in_thread

TD = "six.example"
YAML = f"""
trust_domain: {TD}
listen: {{host: "::"}}
services:
  orders: {{run: "shop.orders:app"}}
  payments: {{run: "shop.payments:app"}}
calls:
  - {{from: orders, to: payments, allow: ["POST /charges"]}}
"""


async def test_discovery_answers_at_an_ipv6_address_of_this_machine_and_on_loopback(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = machine_address(socket.AF_INET6)
    if address is None:
        pytest.skip("this machine has no non-loopback IPv6 address to listen on")
    monkeypatch.setenv(crypto.SEAL_KEY_ENV, base64.urlsafe_b64encode(os.urandom(32)).decode())
    config = parse_config(YAML, source="test.yaml")
    with identity_server_in_thread(config, short_tmp / "state", discovery=True) as running:
        selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.readlink('/proc/self/exe')}"]
        for name in ("orders", "payments"):
            running.call(running.server.service.register, f"spiffe://{TD}/{name}", selectors, None)
        url = running.server.discovery_url
        assert url is not None
        assert url.startswith("https://[::1]:")
        snapshot = json.loads((short_tmp / "state" / "discovery.json").read_text())
        assert snapshot["url"] == url
        port = url.rsplit(":", 1)[1]
        payments = X509Source(running.address, spiffe_id=f"spiffe://{TD}/payments")
        orders = X509Source(running.address, spiffe_id=f"spiffe://{TD}/orders")
        await payments.start()
        await orders.start()
        try:
            # payments registers through loopback; orders finds it through either address
            registering = DiscoveryClient(RotatingTLS(payments), url)
            await registering.register("https://[::1]:9443")
            for where in (url, f"https://[{address}]:{port}"):
                client = DiscoveryClient(RotatingTLS(orders), where)
                try:
                    (found,) = await client.lookup("payments")
                finally:
                    await client.close()
                assert found.url == "https://[::1]:9443"
            await registering.close()
        finally:
            await orders.close()
            await payments.close()
