"""The identity service finds the audit collector by ``TRUSTMESH_AUDIT_URL`` alone, as it
must in a Kubernetes pod, whose state directory holds no collector's endpoint file: its
own events (the collector's SVID issued, among them) spool until the collector listens
there, and then reach it over mTLS, the collector's SPIFFE ID checked."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "audit"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from collectorrig import CONFIG, collector_config, collector_rig, identity_for
from deliveryrig import stored


@pytest.fixture
def folder() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))  # short: the socket's path
    yield where
    shutil.rmtree(where, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _from_identity(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in found if e["metadata"]["product"]["feature"]["name"] == "identity"]


async def test_the_identity_service_delivers_to_the_collector_its_variable_names(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    config = collector_config(CONFIG.replace("audit:\n", f"audit:\n  port: {port}\n"))
    monkeypatch.setenv("TRUSTMESH_AUDIT_URL", f"https://127.0.0.1:{port}")
    own, collectors = folder / "identity", folder / "audit"
    with contextlib.contextmanager(identity_for)(config, own, deliver=True) as identity:
        async with collector_rig(identity, collectors, config) as rig:
            assert rig.running.url == f"https://127.0.0.1:{port}"
            found: list[dict[str, Any]] = []
            for _ in range(150):  # its back-off while the collector was not there
                found = _from_identity(await stored(rig.operator))
                if found:
                    break
                await asyncio.sleep(0.2)
            assert found, "no event of the identity service reached the collector"
    # it had no file to go by: the collector in this process writes none, anywhere
    assert not list(folder.rglob("endpoint.json"))
