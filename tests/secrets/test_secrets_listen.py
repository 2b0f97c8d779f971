"""The secrets service bound to every address (``listen: {host: 0.0.0.0}``): hvac reaches
it at an address of this machine that is not loopback and at 127.0.0.1, and the URL it
gives names loopback."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from addresses import machine_address
from secretsrig import CONFIG, secrets_config, secrets_rig

from trustmesh import crypto
from trustmesh.testing import RunningIdentityServer

#: Outside dev mode (dev mode listens on loopback only): sealed until the operator
#: unseals it, which its sys/health says.
EVERYWHERE = CONFIG.replace("dev: true\n", "dev: false\nlisten: {host: 0.0.0.0}\n")


async def test_it_answers_at_an_address_of_this_machine_and_on_loopback(
    identity: RunningIdentityServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    monkeypatch.setenv(crypto.SEAL_KEY_ENV, base64.urlsafe_b64encode(os.urandom(32)).decode())
    config = secrets_config(EVERYWHERE)
    assert config.listen.host == "0.0.0.0"  # noqa: S104 - the setting under test
    async with secrets_rig(identity, short_tmp / "state", config) as rig:
        parts = urlsplit(rig.url)
        assert parts.hostname == "127.0.0.1"

        def health(host: str) -> int:
            client = rig.operator.client(f"https://{host}:{parts.port}")
            return int(client.sys.read_health_status(method="GET").status_code)

        # not initialised (501), whichever address asks (hvac blocks: off the server's loop)
        here, there = [await asyncio.to_thread(health, h) for h in ("127.0.0.1", address)]
        assert here == there == 501
