"""``trustmesh.sdk`` imports its names when they are first used: a process that needs
one SDK module does not import the rest, and every public name is what it always was —
``client`` and ``secrets`` the runtime's functions, though modules share their names."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import trustmesh.sdk
from trustmesh.sdk import runtime


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_one_sdk_module_does_not_import_the_rest() -> None:
    found = _run(
        """
        import sys
        import trustmesh.sdk.tls
        print(sorted(m for m in ("aiohttp", "trustmesh.sdk.runtime", "trustmesh.sdk.client")
                     if m in sys.modules))
        """
    )
    assert found == "[]"


def test_client_and_secrets_are_the_functions_whichever_import_comes_first() -> None:
    found = _run(
        """
        import trustmesh.sdk.client, trustmesh.sdk.secrets  # the modules first
        import trustmesh.sdk as sdk
        from trustmesh.sdk import client, secrets
        from trustmesh.sdk.runtime import client as c, secrets as s
        print(client is c is sdk.client, secrets is s is sdk.secrets, callable(client))
        """
    )
    assert found == "True True True"


def test_every_public_name_resolves() -> None:
    for name in trustmesh.sdk.__all__:
        assert getattr(trustmesh.sdk, name) is not None, name
    assert trustmesh.sdk.run_service is runtime.run_service
    assert set(trustmesh.sdk.__all__) <= set(dir(trustmesh.sdk))
    with pytest.raises(AttributeError, match="no_such_name"):
        trustmesh.sdk.no_such_name  # noqa: B018
