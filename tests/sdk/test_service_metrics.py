"""A service run by the SDK serves its Prometheus metrics on loopback when asked
(``TRUSTMESH_METRICS_PORT``, as ``trustmesh up`` sets it), and says where in
``TRUSTMESH_METRICS_FILE``: its decisions by outcome and reason (never a path), its
SVID's time left, its audit spool's depth."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.delivery import AUDIT_URL_ENV
from trustmesh.sdk.metrics import METRICS_FILE_ENV, METRICS_PORT_ENV
from trustmesh.sdk.runtime import EVENTS_ENV, run_service
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import RunningIdentityServer

TD = "sdk.example"
ORDERS = f"spiffe://{TD}/orders"  # registered for this process by conftest.py
PAYMENTS = f"spiffe://{TD}/payments"

CONFIG = f"""
trust_domain: {TD}
dev: true
services:
  orders: {{external: true}}
  payments: {{external: true}}
calls:
  - {{from: orders, to: payments, allow: ["POST /charges"]}}
"""


async def charge(_: Request) -> JSONResponse:
    return JSONResponse({"ok": True}, status_code=201)


APP = Starlette(routes=[Route("/charges", charge, methods=["POST"])])

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as answer:
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("text/plain; version=")
        text = await answer.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _decisions(found: Samples, decision: str, reason: str) -> float:
    labels = (("decision", decision), ("reason", reason), ("service", "payments"))
    return found.get(("trustmesh_service_decisions_total", labels), 0.0)


async def test_a_service_serves_its_decisions_certificate_and_spool(
    identity: RunningIdentityServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(CONFIG)
    state = short_tmp / "state"
    published = state / "metrics" / "payments.json"
    monkeypatch.setenv(METRICS_PORT_ENV, "0")
    monkeypatch.setenv(METRICS_FILE_ENV, str(published))
    monkeypatch.setenv(EVENTS_ENV, str(state / "events" / "payments.jsonl"))
    monkeypatch.setenv(AUDIT_URL_ENV, "")  # a collector not up yet: events wait in the spool
    runtime = await run_service(
        APP, service="payments", config_path=config, address=identity.address, port=0
    )
    source = X509Source(identity.address, spiffe_id=ORDERS)
    try:
        url = runtime.metrics_url
        assert url is not None
        assert url.startswith("http://127.0.0.1:")  # loopback only
        assert json.loads(published.read_text()) == {
            "metrics_url": url,
            "pid": os.getpid(),
            "service": "payments",
        }
        await source.start()
        async with ServiceClient(RotatingTLS(source), runtime.url, PAYMENTS) as orders:
            for _ in range(3):
                assert (await orders.post("/charges", json={})).status == 201
            assert (await orders.post("/refunds/secret-path", json={})).status == 403
        async with aiohttp.ClientSession() as http:
            found = await _scrape(http, url)
            assert _decisions(found, "allow", "policy-allow") == 3
            assert _decisions(found, "deny", "policy-deny") == 1
            left = found[("trustmesh_service_certificate_seconds_left", (("service", "payments"),))]
            assert 0 < left <= 10  # the fixture's SVIDs live 10 s
            assert not any("/" in v for _, labels in found for _, v in labels)  # no path
            deadline = time.monotonic() + 10
            while (spooled := _spool(found)) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the delivering thread moves them to the spool
                found = await _scrape(http, url)
            assert spooled >= 4  # the four decisions, at least: none delivered
            assert (
                found[("trustmesh_service_audit_delivered_total", (("service", "payments"),))] == 0
            )
            async with http.get(url.replace("/metrics", "/other")) as answer:
                assert answer.status == 404
    finally:
        await source.close()
        await runtime.close()
    assert not published.exists()  # a stopped service's URL is not left behind


def _spool(found: Samples) -> float:
    return found[("trustmesh_service_audit_spooled_events", (("service", "payments"),))]


async def test_no_metrics_unless_asked(
    identity: RunningIdentityServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(CONFIG)
    monkeypatch.delenv(METRICS_PORT_ENV, raising=False)
    runtime = await run_service(
        APP, service="payments", config_path=config, address=identity.address, port=0
    )
    try:
        assert runtime.metrics is None
        assert runtime.metrics_url is None
    finally:
        await runtime.close()
