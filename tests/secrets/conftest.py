"""Fixtures of the secrets tests (helpers in secretsrig.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from secretsrig import SecretsRig, identity_for, secrets_config, secrets_rig

from trustmesh.testing import RunningIdentityServer


@pytest.fixture
def identity(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(secrets_config(), short_tmp / "identity")


@pytest.fixture
async def rig(identity: RunningIdentityServer, short_tmp: Path) -> AsyncIterator[SecretsRig]:
    """A dev-mode secrets service (initialised and unsealed from its key file)."""
    async with secrets_rig(identity, short_tmp / "state", secrets_config()) as running:
        yield running
