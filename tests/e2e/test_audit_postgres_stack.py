"""The audit collector of `trustmesh up` on PostgreSQL (issue 16: "SQLite by default,
PostgreSQL tested in CI"): a fresh database whose tables the owner made, the collector
connecting as a role given only what `trustmesh audit grants` prints (INSERT and
SELECT). Through real clients — a user signs in and is let through the gateway, a bad
token is refused, ten wrong passwords are tried at the provider — the events land in
PostgreSQL (read there directly, not only through the CLI), the chain verifies, the
brute-force alert is raised, and a record then edited in the table by raw SQL is named
by `trustmesh audit verify`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authrig import FormLogin, code_flow
from secretscan import UsedSecrets, assert_no_secret_recorded
from services import POSTGRES_ADMIN, postgres_database, require_service
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from trustmesh.audit.alerts import AlertStore
from trustmesh.audit.ledger import Ledger
from trustmesh.audit.response_store import ResponseStore
from trustmesh.audit.spans import SpanStore
from trustmesh.cli import app
from trustmesh.cli.auth_cmd import admin_call
from trustmesh.config import load_config
from trustmesh.store import create_engine
from trustmesh.testing import run_cli as tm
from trustmesh.testing import until

TD = "pgaudit.example"
GATEWAY = f"spiffe://{TD}/trustmesh/gateway"
CONFIG = """trust_domain: pgaudit.example
dev: true
services:
  inventory: {{run: "trustmesh.demo.inventory:app"}}
gateway:
  routes:
    - {{path: /items, to: inventory, methods: [GET]}}
audit:
  database: {database}
  checkpoint_every: 10
"""
REDIRECT = "https://shop.example/cb"
PASSWORD = "a shopper's long passphrase"
GUESS = "not the password at all"
CLIENT = "shop-web"
BRUTE_FORCE = "Brute-force login against one account"


@contextlib.asynccontextmanager
async def collector_database() -> AsyncIterator[tuple[str, str, str]]:
    """A fresh database whose audit tables its owner made, and a role that may only
    INSERT and SELECT on them (the statements `trustmesh audit grants` prints, run by
    the owner): the owner's URL, the collector's and its role."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    role = f"tm_audit_e2e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        async with postgres_database("tm_e2e_audit") as url:
            engine = create_engine(url)
            try:
                for store in (
                    Ledger(engine),
                    AlertStore(engine),
                    ResponseStore(engine),
                    SpanStore(engine),
                ):
                    await store.create()
            finally:
                await engine.dispose()
            granted = CliRunner().invoke(app, ["audit", "grants", role])  # in-process
            assert granted.exit_code == 0, granted.output
            owner = await asyncpg.connect(_dsn(url))
            try:
                await owner.execute(granted.stdout)
            finally:
                await owner.close()
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            yield url, as_role, role
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def _dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextlib.contextmanager
def stack_up(database: str) -> Iterator[tuple[Path, Path, dict[str, Any], UsedSecrets]]:
    """`trustmesh up --detach` with the collector on ``database``; its declaration, state
    and `status --json`; `down` afterwards, and no secret the test used in any event."""
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config, state = root / "trustmesh.yaml", root / "state"
    config.write_text(CONFIG.format(database=database))
    used = UsedSecrets()
    down = False
    try:
        up = tm("up", "--config", str(config), "--state", str(state), "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        status = tm("status", "--config", str(config), "--state", str(state), "--json")
        components = {c["name"]: c for c in json.loads(status.stdout)["components"]}
        yield config, state, components, used
        down = True
        assert tm("down", "--state", str(state)).returncode == 0
        assert_no_secret_recorded(state, used, at_least=2)
    finally:
        if not down:
            tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


def audit(state: Path, *args: str) -> list[dict[str, Any]]:
    """`trustmesh audit ARGS --state STATE --json`, its JSON lines."""
    ran = tm("audit", *args, "--state", str(state), "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return [json.loads(line) for line in ran.stdout.splitlines()]


def verify(state: Path) -> tuple[int, dict[str, Any]]:
    ran = tm("audit", "verify", "--state", str(state), "--json")
    return ran.returncode, json.loads(ran.stdout)


def _trustmesh(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["unmapped"]["trustmesh"])


def sign_in_web_user(
    config: Path,
    state: Path,
    public: str,
    used: UsedSecrets,
    user: str,
    *,
    audience: str = GATEWAY,
) -> str:
    """``user`` made at the provider and signed in (code + PKCE) as the web client whose
    tokens are for ``audience`` (the gateway); the access token."""
    declared = load_config(config)
    body = {"username": user, "password": PASSWORD}
    admin_call(declared, state, "POST", "/admin/v1/users", body)
    client = {
        "client_id": CLIENT,
        "method": "none",
        "redirect_uris": [REDIRECT],
        "audiences": [audience],
    }
    admin_call(declared, state, "POST", "/admin/v1/clients", client)
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(state / "edge" / "ca.pem")
        tokens = code_flow(browser, public, CLIENT, REDIRECT, user, PASSWORD)
    used.add(PASSWORD)
    used.tokens(tokens)
    return str(tokens["access_token"])


def _guess_ten_times(state: Path, public: str, target: str) -> None:
    """Ten wrong passwords for ``target`` at the provider's login form."""
    client = OAuth2Session(
        client_id=CLIENT,
        redirect_uri=REDIRECT,
        scope="openid",
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
    )
    start, _ = client.create_authorization_url(
        public + "/oauth2/authorize", code_verifier=generate_token(48), nonce=generate_token(16)
    )
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(state / "edge" / "ca.pem")
        form = FormLogin(browser, public)
        for _ in range(10):
            assert form.login(start, target, GUESS).status_code != 303


def _forged(token: str) -> str:
    """``token`` with one character of its signature changed: well formed, but signed
    by no key."""
    head, claims, signature = token.split(".")
    changed = "B" if signature[10] == "A" else "A"
    return f"{head}.{claims}.{signature[:10]}{changed}{signature[11:]}"


async def _edit(db: asyncpg.Connection, seq: int) -> None:
    """Record ``seq``'s denial turned into an allow, in the table, by raw SQL."""
    body = bytes(await db.fetchval("SELECT body FROM audit_records WHERE seq = $1", seq))
    edited = body.replace(b'"decision":"deny"', b'"decision":"allow"')
    assert edited != body
    await db.execute("UPDATE audit_records SET body = $1 WHERE seq = $2", edited, seq)


@pytest.mark.services
async def test_the_stack_audits_to_postgresql_and_verify_finds_an_edit_there() -> None:
    async with collector_database() as (owner_url, collector_url, role):
        with stack_up(collector_url) as (config, state, components, used):
            assert components["audit"]["healthy"] is True, components["audit"]
            public, gateway = components["auth"]["public_url"], components["gateway"]["url"]
            user = f"sam{uuid.uuid4().hex[:6]}"
            token = await asyncio.to_thread(sign_in_web_user, config, state, public, used, user)
            target = f"nobody{uuid.uuid4().hex[:8]}"
            await asyncio.to_thread(_guess_ten_times, state, public, target)
            forged = _forged(token)
            used.add(GUESS, forged)
            with requests.Session() as s:
                s.trust_env = False
                s.verify = str(state / "edge" / "ca.pem")
                allowed = s.get(
                    gateway + "/items/tea", headers={"Authorization": f"Bearer {token}"}
                )
                assert allowed.status_code == 200, allowed.text
                bad = {"Authorization": f"Bearer {forged}"}
                assert s.get(gateway + "/items/tea", headers=bad).status_code == 401

            # the gateway's allow and deny, the provider's ten refusals: in the log
            def landed() -> list[dict[str, Any]]:
                found = audit(state, "events", "--limit", "1000")
                of_gateway = [
                    e
                    for e in found
                    if _trustmesh(e).get("reporter") == GATEWAY
                    and _trustmesh(e).get("reason") in ("request-forwarded", "token-bad-signature")
                ]
                failed = [
                    e
                    for e in found
                    if _trustmesh(e).get("reason") == "login-failed"
                    and _trustmesh(e).get("attributes", {}).get("login") == target
                ]
                reasons = sorted(_trustmesh(e)["reason"] for e in of_gateway)
                done = reasons == ["request-forwarded", "token-bad-signature"] and len(failed) == 10
                return [*of_gateway, *failed] if done else []

            found = until(landed, "the gateway's allow and deny, the ten failed logins", within=20)
            denial = next(e for e in found if _trustmesh(e)["reason"] == "token-bad-signature")
            assert _trustmesh(denial)["decision"] == "deny"
            # one brute-force alert for the ten failures
            alerts = until(
                lambda: [
                    a
                    for a in audit(state, "alerts")
                    if a["title"] == BRUTE_FORCE
                    and a["group"].get("unmapped.trustmesh.attributes.login") == target
                ],
                "the brute-force alert",
                within=10,
            )
            assert len(alerts) == 1, alerts

            db = await asyncpg.connect(_dsn(owner_url))
            try:
                # in PostgreSQL, written by the collector's role (nothing on SQLite)
                assert not list((state / "audit").glob("*.db*"))
                connected = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND usename = $1",
                    role,
                )
                assert connected >= 1
                may = "SELECT has_table_privilege($1, 'audit_records', $2)"
                assert [await db.fetchval(may, role, p) for p in ("INSERT", "SELECT")] == [True] * 2
                for forbidden in ("UPDATE", "DELETE", "TRUNCATE"):
                    assert await db.fetchval(may, role, forbidden) is False
                stored = {
                    r["uid"]: r["seq"]
                    for r in await db.fetch(
                        "SELECT uid, seq FROM audit_records WHERE uid = any($1::text[])",
                        [e["metadata"]["uid"] for e in found],
                    )
                }
                assert stored == {e["metadata"]["uid"]: e["seq"] for e in found}
                alert_uid = await db.fetchval(
                    "SELECT uid FROM audit_alerts WHERE uid = $1", alerts[0]["uid"]
                )
                assert alert_uid == alerts[0]["uid"]
                bodies = [
                    bytes(r["body"]) for r in await db.fetch("SELECT body FROM audit_records")
                ]
                assert not [v for v in used.values for b in bodies if v.encode() in b]
                # the chain verifies
                code, verdict = verify(state)
                assert (code, verdict["intact"], verdict["finding"]) == (0, True, None), verdict
                assert verdict["records"] >= max(stored.values())
                # a denial turned into an allow in the table: named by verify
                await _edit(db, denial["seq"])
                code, verdict = verify(state)
                assert (code, verdict["intact"]) == (1, False), verdict
                finding = verdict["finding"]
                assert (finding["kind"], finding["seq"]) == ("altered", denial["seq"]), finding
                assert f"record {denial['seq']} was altered" in finding["message"]
            finally:
                await db.close()
