"""``trustmesh gateway key add|list|revoke|rotate`` against a running gateway (its admin
API, as the operator): exit codes, ``--json``, what is shown and stored, the gateway's
events, the gateway deciding each presented key by the change at once — and without a
running gateway, a clear refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from clirig import events_of, gateway_on, identity_on, tm

from trustmesh import crypto
from trustmesh.config import load_config
from trustmesh.gateway.apikeys import hash_key
from trustmesh.gateway.keystore import keys_db_path
from trustmesh.gateway.server import RunningGateway
from trustmesh.testing import RunningIdentityServer, run_cli

CONFIG = """
trust_domain: keys.example
dev: true
services:
  orders: {external: true}
  reports: {external: true}
auth: {roles: [user, admin, reader]}
gateway:
  routes:
    - {path: /orders, to: orders, auth: [api_key], methods: [GET, POST]}
    - {path: /reports, to: reports, auth: [api_key], name: reports}
    - {path: /public, to: orders, auth: [anonymous]}
"""
OPERATOR = "spiffe://keys.example/trustmesh/operator"


@pytest.fixture
def env(short_tmp: Path) -> tuple[Path, Path]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(CONFIG)
    return config, short_tmp / "state"


@pytest.fixture
def identity(env: tuple[Path, Path]) -> Iterator[RunningIdentityServer]:
    with identity_on(*env) as running:
        yield running


@dataclass(frozen=True)
class Stack:
    config: Path
    state: Path
    gateway: RunningGateway

    @property
    def args(self) -> tuple[str, ...]:
        return ("--config", str(self.config), "--state", str(self.state))

    async def tm(self, *args: str) -> object:
        """The command, beside the gateway's event loop."""
        return await asyncio.to_thread(tm, *args, *self.args)

    def reports(self, key: str) -> int:
        """What the gateway answers a client presenting ``key`` on /reports: 401 when it
        refuses the key, 503 when it takes it (no instance of reports runs)."""
        with requests.Session() as s:
            s.trust_env = False
            return s.get(
                self.gateway.url + "/reports",
                headers={"Authorization": f"ApiKey {key}"},
                verify=str(crypto.edge_ca_path(self.state)),
                timeout=30,
            ).status_code


@pytest.fixture
async def stack(env: tuple[Path, Path], identity: RunningIdentityServer) -> AsyncIterator[Stack]:
    config, state = env
    async with gateway_on(identity, load_config(config), state) as gateway:
        yield Stack(config, state, gateway)


def _changes(state: Path) -> list[str]:
    """The reasons of the key changes the gateway recorded."""
    return [
        str(e["status_detail"])
        for e in events_of(state, "gateway")
        if str(e["status_detail"]).startswith("api-key-")
    ]


async def test_add_shows_the_key_once_list_never(stack: Stack) -> None:
    made = await stack.tm(
        "gateway", "key", "add", "ci bot", "--scope", "/orders", "--scope", "reports",
        "--role", "reader", "--expires", "90d",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tmk_")
    assert len(key) == 69
    assert key not in made.stderr
    key_id = key.split("_")[1]
    assert f"key {key_id} (ci bot) added" in made.stderr
    as_json = await stack.tm("gateway", "key", "add", "ci2", "--scope", "*", "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["key"].startswith(f"tmk_{doc['id']}_")
    assert (doc["scopes"], doc["roles"], doc["expires_at"]) == (["*"], [], None)
    listed = await stack.tm("gateway", "key", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    docs = {d["id"]: d for d in json.loads(listed.stdout)}
    assert docs[key_id]["name"] == "ci bot"
    assert docs[key_id]["scopes"] == ["/orders", "reports"]
    assert docs[key_id]["roles"] == ["reader"]
    assert docs[key_id]["status"] == "active"
    assert docs[key_id]["principal"] == f"apikey:{key_id}"
    assert docs[key_id]["expires_at"] is not None
    table = await stack.tm("gateway", "key", "list")
    assert table.returncode == 0
    assert key_id in table.stdout
    assert doc["id"] in table.stdout
    for shown in (listed.stdout, table.stdout):
        for k in (key, doc["key"]):
            assert k.split("_")[2] not in shown
            assert hash_key(k) not in shown
    stored = b"".join(f.read_bytes() for f in keys_db_path(stack.state).parent.iterdir())
    assert hash_key(key).encode() in stored
    assert key.split("_")[2].encode() not in stored
    assert doc["key"].split("_")[2].encode() not in stored
    # the gateway recorded both, naming the operator, never a secret; the CLI wrote nothing
    text = (stack.state / "events" / "gateway.jsonl").read_text()
    assert key.split("_")[2] not in text
    assert doc["key"].split("_")[2] not in text
    assert _changes(stack.state) == ["api-key-created", "api-key-created"]
    created = [
        e for e in events_of(stack.state, "gateway") if e["status_detail"] == "api-key-created"
    ]
    assert {e["unmapped"]["trustmesh"]["peer_spiffe_id"] for e in created} == {OPERATOR}
    assert not (stack.state / "events" / "cli.jsonl").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scope", "/nope"], "unknown route '/nope' (known routes: /orders, reports, /public"),
        (["--scope", "/orders", "--role", "boss"], "unknown role 'boss'"),
        (["--scope", "/orders", "--role", "admin"], "needs MFA"),
        (["--scope", "/orders", "--expires", "soon"], "--expires 'soon'"),
    ],
)
async def test_add_refuses_bad_usage_with_exit_2(
    stack: Stack, extra: list[str], message: str
) -> None:
    result = await stack.tm("gateway", "key", "add", "x", *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    listed = await stack.tm("gateway", "key", "list", "--json")
    assert json.loads(listed.stdout) == []
    assert _changes(stack.state) == []


async def test_a_route_without_api_key_auth_gets_a_warning(stack: Stack) -> None:
    result = await stack.tm("gateway", "key", "add", "x", "--scope", "/public")
    assert result.returncode == 0, result.stderr
    assert "warning: route /public does not accept API keys" in result.stderr


async def test_unknown_keys_are_refused_with_exit_2(stack: Stack) -> None:
    listed = await stack.tm("gateway", "key", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    for command in ("revoke", "rotate"):
        missing = await stack.tm("gateway", "key", command, "abcdefghijkl")
        assert missing.returncode == 2
        assert "no API key 'abcdefghijkl'" in missing.stderr


async def test_revoke_and_rotate_reach_the_running_gateway(stack: Stack) -> None:
    made = await stack.tm("gateway", "key", "add", "svc", "--scope", "reports", "--json")
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    assert await asyncio.to_thread(stack.reports, first["key"]) == 503  # taken
    rotated = await stack.tm("gateway", "key", "rotate", first["id"], "--grace", "1h", "--json")
    assert rotated.returncode == 0, rotated.stderr
    second = json.loads(rotated.stdout)
    assert second["id"] == first["id"]
    assert second["key"] != first["key"]
    assert second["status"] == "rotating"
    assert second["previous_valid_until"] is not None
    for key in (first["key"], second["key"]):  # the old one within its grace
        assert await asyncio.to_thread(stack.reports, key) == 503
    revoked = await stack.tm("gateway", "key", "revoke", first["id"], "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["status"] == "revoked"
    for key in (first["key"], second["key"]):  # at once: the change came through it
        assert await asyncio.to_thread(stack.reports, key) == 401
    refusals = [
        e for e in events_of(stack.state, "gateway") if e["status_detail"] == "api-key-revoked"
    ]
    assert len(refusals) >= 3  # the revocation, and each key refused for it
    again = await stack.tm("gateway", "key", "revoke", first["id"])
    assert again.returncode == 0
    assert "revoked already" in again.stdout
    refused = await stack.tm("gateway", "key", "rotate", first["id"])
    assert refused.returncode == 2
    assert "revoked" in refused.stderr
    assert _changes(stack.state)[:3] == ["api-key-created", "api-key-rotated", "api-key-revoked"]
    text = (stack.state / "events" / "gateway.jsonl").read_text()
    for key in (first["key"], second["key"]):
        assert key.split("_")[2] not in text


@pytest.mark.parametrize(
    ("grace", "message"), [("8d", "0 to 7d"), ("1x", "--grace '1x'"), ("-1", "--grace '-1'")]
)
async def test_rotate_refuses_a_bad_grace(stack: Stack, grace: str, message: str) -> None:
    made = await stack.tm("gateway", "key", "add", "svc", "--scope", "reports", "--json")
    key = json.loads(made.stdout)
    result = await stack.tm("gateway", "key", "rotate", key["id"], "--grace", grace)
    assert result.returncode == 2
    assert message in result.stderr
    assert await asyncio.to_thread(stack.reports, key["key"]) == 503  # unchanged
    assert _changes(stack.state) == ["api-key-created"]


async def test_the_installed_command_runs_it(stack: Stack) -> None:
    made = await asyncio.to_thread(
        run_cli, "gateway", "key", "add", "svc", "--scope", "reports", *stack.args
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tmk_")
    unknown = await asyncio.to_thread(
        run_cli, "gateway", "key", "add", "svc", "--scope", "/nope", *stack.args
    )
    assert unknown.returncode == 2
    assert "known routes: /orders, reports, /public" in unknown.stderr
    listed = await asyncio.to_thread(run_cli, "gateway", "key", "list", "--json", *stack.args)
    assert listed.returncode == 0
    assert [d["id"] for d in json.loads(listed.stdout)] == [key.split("_")[1]]
    assert key.split("_")[2] not in listed.stdout


@pytest.mark.parametrize(
    "command",
    [
        ("list",),
        ("add", "x", "--scope", "reports"),
        ("revoke", "abcdefghijkl"),
        ("rotate", "abcdefghijkl"),
    ],
)
def test_without_a_running_gateway_the_command_says_so(
    env: tuple[Path, Path], identity: RunningIdentityServer, command: tuple[str, ...]
) -> None:
    """The identity service runs, the gateway does not: exit 1, a message, no traceback,
    and no key store made."""
    result = run_cli("gateway", "key", *command, "--config", str(env[0]), "--state", str(env[1]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the gateway is not running" in result.stderr
    assert "trustmesh up" in result.stderr
    assert "Traceback" not in result.stderr
    assert not keys_db_path(env[1]).exists()


async def test_a_gateway_that_stopped_answering_is_a_clear_failure(
    env: tuple[Path, Path], identity: RunningIdentityServer
) -> None:
    """Its endpoint file is left behind (a crash): the command cannot reach it, says so."""
    config, state = env
    async with gateway_on(identity, load_config(config), state) as gateway:
        where = (state / "gateway" / "endpoint.json").read_text()
        assert gateway.admin_url in where
    (state / "gateway" / "endpoint.json").write_text(where)
    result = await asyncio.to_thread(
        tm, "gateway", "key", "list", "--config", str(config), "--state", str(state)
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr
