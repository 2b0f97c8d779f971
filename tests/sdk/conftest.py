"""An identity service for SDK tests, with two SPIFFE IDs registered for this process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustmesh.config import parse_config
from trustmesh.testing import RunningIdentityServer, identity_server_in_thread

TD = "sdk.example"
ORDERS = f"spiffe://{TD}/orders"
PAYMENTS = f"spiffe://{TD}/payments"
INVENTORY = f"spiffe://{TD}/inventory"


def start_identity(state: Path, trust_domain: str, ids: list[str], ttl: str = "10s"):  # type: ignore[no-untyped-def]
    config = parse_config(
        f"trust_domain: {trust_domain}\ndev: true\nidentity: {{svid_ttl: {ttl}, max_svid_ttl: 1h}}\n",
        source="test.yaml",
    )
    cm = identity_server_in_thread(config, state)
    running = cm.__enter__()
    exe = os.readlink("/proc/self/exe")
    for spiffe_id in ids:
        running.call(
            running.server.service.register,
            spiffe_id,
            [f"unix:uid:{os.getuid()}", f"unix:path:{exe}"],
            None,
        )
    return cm, running


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    cm, running = start_identity(short_tmp / "state", TD, [ORDERS, PAYMENTS, INVENTORY])
    try:
        yield running
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def other_identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    """Another trust domain, with its own CA."""
    cm, running = start_identity(
        short_tmp / "other", "other.example", ["spiffe://other.example/orders"]
    )
    try:
        yield running
    finally:
        cm.__exit__(None, None, None)
