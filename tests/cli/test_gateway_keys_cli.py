"""``trustmesh gateway key add|list|revoke|rotate``: exit codes, ``--json``, what is shown
and stored, the events, and a verifier (as the gateway runs it) seeing each change."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmesh.cli import app
from trustmesh.config import load_config
from trustmesh.events import read_events
from trustmesh.gateway.apikeys import hash_key
from trustmesh.gateway.keystore import ApiKeyVerifier, keys_db_path
from trustmesh.testing import run_cli

runner = CliRunner()

CONFIG = """
trust_domain: keys.example
dev: true
services:
  orders: {external: true}
  reports: {external: true}
auth: {roles: [user, admin, reader]}
gateway:
  routes:
    - {path: /orders, to: orders, auth: [api_key, jwt], methods: [GET, POST]}
    - {path: /reports, to: reports, auth: [api_key], name: reports}
    - {path: /public, to: orders, auth: [jwt]}
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(short_tmp: Path) -> tuple[Path, Path]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(CONFIG)
    return config, short_tmp / "state"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tm(*args: str) -> Ran:
    """The command, in process (its import takes seconds: one subprocess test shows the
    installed entry point runs it alike)."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def _args(env: tuple[Path, Path]) -> tuple[str, ...]:
    return ("--config", str(env[0]), "--state", str(env[1]))


def test_add_shows_the_key_once_list_never(env: tuple[Path, Path]) -> None:
    config, state = env
    made = tm(
        "gateway",
        "key",
        "add",
        "ci bot",
        "--scope",
        "/orders",
        "--scope",
        "reports",
        "--role",
        "reader",
        "--expires",
        "90d",
        *_args(env),
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tmk_")
    assert len(key) == 69
    assert key not in made.stderr
    key_id = key.split("_")[1]
    assert f"key {key_id} (ci bot) added" in made.stderr
    as_json = tm("gateway", "key", "add", "ci2", "--scope", "*", "--json", *_args(env))
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["key"].startswith(f"tmk_{doc['id']}_")
    assert (doc["scopes"], doc["roles"], doc["expires_at"]) == (["*"], [], None)
    listed = tm("gateway", "key", "list", "--state", str(state), "--json")
    assert listed.returncode == 0, listed.stderr
    docs = {d["id"]: d for d in json.loads(listed.stdout)}
    assert docs[key_id]["name"] == "ci bot"
    assert docs[key_id]["scopes"] == ["/orders", "reports"]
    assert docs[key_id]["roles"] == ["reader"]
    assert docs[key_id]["status"] == "active"
    assert docs[key_id]["principal"] == f"apikey:{key_id}"
    assert docs[key_id]["expires_at"] is not None
    table = tm("gateway", "key", "list", "--state", str(state))
    assert table.returncode == 0
    assert key_id in table.stdout
    assert doc["id"] in table.stdout
    for shown in (listed.stdout, table.stdout):
        for k in (key, doc["key"]):
            assert k.split("_")[2] not in shown
            assert hash_key(k) not in shown
    stored = b"".join(f.read_bytes() for f in keys_db_path(state).parent.iterdir())
    assert hash_key(key).encode() in stored
    assert key.split("_")[2].encode() not in stored
    assert doc["key"].split("_")[2].encode() not in stored
    cli_events = (state / "events" / "cli.jsonl").read_text()
    assert key.split("_")[2] not in cli_events
    assert [e["status_detail"] for e in read_events(state / "events" / "cli.jsonl")] == [
        "api-key-created",
        "api-key-created",
    ]
    assert load_config(config).gateway is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scope", "/nope"], "unknown route '/nope' (known routes: /orders, reports, /public"),
        (["--scope", "/orders", "--role", "boss"], "unknown role 'boss'"),
        (["--scope", "/orders", "--role", "admin"], "needs MFA"),
        (["--scope", "/orders", "--expires", "soon"], "--expires 'soon'"),
    ],
)
def test_add_refuses_bad_usage_with_exit_2(
    env: tuple[Path, Path], extra: list[str], message: str
) -> None:
    result = tm("gateway", "key", "add", "x", *extra, *_args(env))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    listed = tm("gateway", "key", "list", "--state", str(env[1]), "--json")
    assert json.loads(listed.stdout) == []


def test_a_route_without_api_key_auth_gets_a_warning(env: tuple[Path, Path]) -> None:
    result = tm("gateway", "key", "add", "x", "--scope", "/public", *_args(env))
    assert result.returncode == 0, result.stderr
    assert "warning: route /public does not accept API keys" in result.stderr


def test_list_of_a_fresh_state_is_empty_and_creates_nothing(short_tmp: Path) -> None:
    state = short_tmp / "nothing"
    listed = tm("gateway", "key", "list", "--state", str(state), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert not state.exists()
    for command in ("revoke", "rotate"):
        missing = tm("gateway", "key", command, "abcdefghijkl", "--state", str(state))
        assert missing.returncode == 2
        assert "no API key 'abcdefghijkl'" in missing.stderr


async def test_revoke_and_rotate_reach_a_running_verifier(env: tuple[Path, Path]) -> None:
    config, state = env
    made = await asyncio.to_thread(
        tm, "gateway", "key", "add", "svc", "--scope", "reports", "--json", *_args(env)
    )
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    clock = Clock(1.0)  # the snapshot's age; keys are checked against it (no expiry here)
    verifier = await ApiKeyVerifier.open(state, load_config(config), clock=clock)
    try:
        assert (await verifier.verify(first["key"], "reports")).allowed
        rotated = await asyncio.to_thread(
            tm,
            "gateway",
            "key",
            "rotate",
            first["id"],
            "--grace",
            "1h",
            "--json",
            "--state",
            str(state),
        )
        assert rotated.returncode == 0, rotated.stderr
        second = json.loads(rotated.stdout)
        assert second["id"] == first["id"]
        assert second["key"] != first["key"]
        assert second["status"] == "rotating"
        assert second["previous_valid_until"] is not None
        clock.now += verifier.refresh
        assert (await verifier.verify(first["key"], "reports")).allowed  # within its grace
        assert (await verifier.verify(second["key"], "reports")).allowed
        revoked = await asyncio.to_thread(
            tm, "gateway", "key", "revoke", first["id"], "--json", "--state", str(state)
        )
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["status"] == "revoked"
        assert (await verifier.verify(second["key"], "reports")).allowed  # cached ≤ 1 s
        clock.now += verifier.refresh
        for key in (first["key"], second["key"]):
            assert (await verifier.verify(key, "reports")).reason == "api-key-revoked"
        again = await asyncio.to_thread(
            tm, "gateway", "key", "revoke", first["id"], "--state", str(state)
        )
        assert again.returncode == 0
        assert "revoked already" in again.stdout
        refused = await asyncio.to_thread(
            tm, "gateway", "key", "rotate", first["id"], "--state", str(state)
        )
        assert refused.returncode == 2
        assert "revoked" in refused.stderr
    finally:
        await verifier.close()
    recorded = list(read_events(state / "events" / "cli.jsonl"))
    assert [e["status_detail"] for e in recorded] == [
        "api-key-created",
        "api-key-rotated",
        "api-key-revoked",
    ]
    text = (state / "events" / "cli.jsonl").read_text()
    for key in (first["key"], second["key"]):
        assert key.split("_")[2] not in text


@pytest.mark.parametrize(
    ("grace", "message"), [("8d", "0 to 7d"), ("1x", "--grace '1x'"), ("-1", "--grace '-1'")]
)
def test_rotate_refuses_a_bad_grace(env: tuple[Path, Path], grace: str, message: str) -> None:
    made = tm("gateway", "key", "add", "svc", "--scope", "reports", "--json", *_args(env))
    key_id = json.loads(made.stdout)["id"]
    result = tm("gateway", "key", "rotate", key_id, "--grace", grace, "--state", str(env[1]))
    assert result.returncode == 2
    assert message in result.stderr


def test_the_installed_command_runs_it(env: tuple[Path, Path]) -> None:
    made = run_cli("gateway", "key", "add", "svc", "--scope", "reports", *_args(env))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tmk_")
    unknown = run_cli("gateway", "key", "add", "svc", "--scope", "/nope", *_args(env))
    assert unknown.returncode == 2
    assert "known routes: /orders, reports, /public" in unknown.stderr
    listed = run_cli("gateway", "key", "list", "--json", "--state", str(env[1]))
    assert listed.returncode == 0
    assert [d["id"] for d in json.loads(listed.stdout)] == [key.split("_")[1]]
    assert key.split("_")[2] not in listed.stdout
