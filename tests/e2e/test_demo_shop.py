"""The demo shop under `trustmesh up`: separate processes with their own identities,
calling each other over mTLS by name; a caller outside the declaration gets nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authrig import FormLogin, code_flow
from demorig import demo_credentials
from otlprig import OtlpReceiver, otlp_receiver
from prometheus_client.parser import text_string_to_metric_families
from secretscan import UsedSecrets, assert_no_secret_recorded, event_files
from spiffe_http import spiffe_session, write_pems

from trustmesh import crypto
from trustmesh.auth.service import CLIENT_CACHE_SECONDS
from trustmesh.cli.auth_cmd import admin_call
from trustmesh.cli.supervisor import process_alive
from trustmesh.config import default_config_path, load_config
from trustmesh.errors import NotFoundError
from trustmesh.sdk import redeem_join_token, trace
from trustmesh.sdk.client import ServiceClient
from trustmesh.sdk.discovery import DiscoveryClient
from trustmesh.sdk.oauth import AuthClient, TokenSource
from trustmesh.sdk.tls import RotatingTLS
from trustmesh.sdk.x509source import X509Source
from trustmesh.testing import run_cli as tm

TD = "trustmesh.local"
#: Every secret the tests of this module used (tokens, passwords, one-time codes, secret
#: values): no event may carry one (the last test greps every event for them).
USED = UsedSecrets()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config = root / "trustmesh.yaml"
    # the packaged demo, which declares a storefront that runs outside `up` (this test)
    for name in ("default.yaml", "shop.cedar", "shop.tests.yaml", "shop.openapi.yaml"):
        shutil.copy(default_config_path().with_name(name), root / name)
    (root / "default.yaml").rename(config)
    # every span the collector stores goes on to a real OTLP receiver too
    receiver = contextlib.contextmanager(otlp_receiver)()
    otlp = receiver.__enter__()
    declared = config.read_text()
    assert "  tracing: {sample_ratio: 1.0}\n" in declared
    config.write_text(
        declared.replace(
            "  tracing: {sample_ratio: 1.0}\n",
            f'  tracing: {{sample_ratio: 1.0, otlp: {{url: "{otlp.url}"}}}}\n',
        )
    )
    state = root / "state"
    started = time.monotonic()
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    elapsed = time.monotonic() - started
    assert up.returncode == 0, up.stdout + up.stderr
    status = json.loads(
        tm("status", "--config", str(config), "--state", str(state), "--json").stdout
    )
    try:
        yield {
            "config": config,
            "state": state,
            "status": status,
            "up_seconds": elapsed,
            "up_output": up.stdout,
            "up_stderr": up.stderr,
            "otlp": otlp,
        }
        assert tm("down", "--state", str(state)).returncode == 0
        assert_no_secret_recorded(state, USED, at_least=0)  # what `down` flushed too
    finally:
        tm("down", "--state", str(state))
        receiver.__exit__(None, None, None)
        shutil.rmtree(root, ignore_errors=True)


def test_up_starts_every_component_healthy_quickly(shop: dict[str, object]) -> None:
    status = shop["status"]
    assert isinstance(status, dict)
    names = [c["name"] for c in status["components"]]
    assert names == [
        "identity",
        "discovery",
        "audit",
        "console",
        "auth",
        "secrets",
        "gateway",
        "inventory",
        "payments",
        "orders",
    ]
    assert all(c["healthy"] for c in status["components"]), status["components"]
    assert all(c["cert_expires"] for c in status["components"])
    assert float(shop["up_seconds"]) < 90  # type: ignore[arg-type]  # a hang guard, not a benchmark


def test_the_audit_log_of_the_stack_verifies(shop: dict[str, object], tmp_path: Path) -> None:
    """The collector `up` started: its chain verifies with the CLI (also against a copy
    of the checkpoint file), the log is searchable, and a rule is tested over it."""
    state = str(shop["state"])
    verified = tm("audit", "verify", "--state", state, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["intact"] is True
    copy = tmp_path / "checkpoints.jsonl"
    kept = Path(state) / "audit" / "checkpoints.jsonl"
    copy.write_bytes(kept.read_bytes() if kept.exists() else b"")
    verified = tm("audit", "verify", "--state", state, "--checkpoint", str(copy))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit log intact" in verified.stdout
    searched = tm("audit", "events", "--state", state, "--json", "--limit", "5")
    assert searched.returncode == 0, searched.stderr
    rule = tmp_path / "any.yml"
    rule.write_text(
        "title: Anything from auth\nid: 0b9f4e0e-7d43-4f7c-8f0a-2f6f9e1f3c10\nstatus: test\n"
        "logsource: {product: trustmesh, service: auth}\n"
        "detection: {any: {class_uid: [3002, 3003, 3004, 6003]}, condition: any}\nlevel: low\n"
    )
    tested = tm("audit", "rules", "test", str(rule), "--state", state, "--json")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "events" in json.loads(tested.stdout)
    refused = tm("audit", "rules", "test", str(tmp_path / "none"), "--state", state)
    assert refused.returncode == 2
    responses = tm("audit", "response", "list", "--state", state, "--json")
    assert responses.returncode == 0, responses.stderr
    assert all(json.loads(line)["outcome"] for line in responses.stdout.splitlines())
    unknown = tm("audit", "response", "undo", "0" * 32, "--state", state)
    assert unknown.returncode != 0
    assert "no response" in unknown.stderr
    assert tm("audit", "response", "undo", "../x", "--state", state).returncode == 2


class Workload:
    """This test process, holding an identity from a CLI join token."""

    def __init__(self, shop: dict[str, object], name: str) -> None:
        self.shop, self.name = shop, name

    async def __aenter__(self) -> tuple[RotatingTLS, DiscoveryClient]:
        status = self.shop["status"]
        assert isinstance(status, dict)
        token = tm(
            "identity",
            "token",
            "create",
            "--spiffe-id",
            f"spiffe://{TD}/{self.name}",
            "--config",
            str(self.shop["config"]),
            "--state",
            str(self.shop["state"]),
        ).stdout.strip()
        await redeem_join_token(status["workload_api"], token)
        self.source = X509Source(status["workload_api"], spiffe_id=f"spiffe://{TD}/{self.name}")
        await self.source.start()
        tls = RotatingTLS(self.source)
        discovery_url = next(c["url"] for c in status["components"] if c["name"] == "discovery")
        self.discovery = DiscoveryClient(tls, discovery_url)
        auth = next(c for c in status["components"] if c["name"] == "auth")
        self.auth = AuthClient(tls, auth["url"], auth["spiffe_id"])
        self.tokens = TokenSource(self.auth, self.name)
        return tls, self.discovery

    async def __aexit__(self, *_: object) -> None:
        await self.discovery.close()
        await self.auth.close()
        await self.source.close()


async def test_an_order_flows_through_three_services(shop: dict[str, object]) -> None:
    workload = Workload(shop, "storefront")
    async with workload as (tls, discovery):
        (endpoint,) = await discovery.lookup("orders")
        async with ServiceClient(tls, endpoint.url, endpoint.spiffe_id) as bare:
            refused = await bare.post("/orders", json={"item": "tea", "quantity": 2})
            assert refused.status == 401  # every service now requires a token
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        token = workload.tokens.provider(endpoint.spiffe_id)
        async with ServiceClient(tls, endpoint.url, endpoint.spiffe_id, token=token) as orders:
            placed = await orders.post("/orders", json={"item": "tea", "quantity": 2})
            assert placed.status == 201, placed.body
            order = placed.json()
            assert order["charge"].startswith("ch_")
            assert order["reservation"].startswith("res_")
            again = await orders.get(f"/orders/{order['id']}")
            assert again.status == 200
            # a path the declaration does not allow the storefront
            assert (await orders.get("/orders")).status == 403
        with pytest.raises(NotFoundError):  # the storefront may not call payments
            await discovery.lookup("payments")


CARD = "4111111111111111"


async def test_a_card_is_kept_only_as_transit_ciphertext(shop: dict[str, object]) -> None:
    """payments signs the charge with the processor key it read from the secrets service
    and keeps the card only as ciphertext of its transit key: the card is in no answer,
    no store, no log and no event."""
    workload = Workload(shop, "storefront")
    async with workload as (tls, discovery):
        (endpoint,) = await discovery.lookup("orders")
        token = workload.tokens.provider(endpoint.spiffe_id)
        async with ServiceClient(tls, endpoint.url, endpoint.spiffe_id, token=token) as orders:
            body = {"item": "tea", "quantity": 1, "card_number": CARD}
            placed = await orders.post("/orders", json=body)
    assert placed.status == 201, placed.body
    assert CARD.encode() not in placed.body
    state = Path(str(shop["state"]))
    for path in state.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert CARD.encode() not in path.read_bytes(), path
    audit = [
        json.loads(line) for line in (state / "secrets" / "audit.jsonl").read_text().splitlines()
    ]
    encrypted = [
        r
        for r in audit
        if r["type"] == "response"
        and r["request"]["path"] == "transit/encrypt/payments"
        and r["response"]["status"] == 200
    ]
    assert encrypted
    assert encrypted[-1]["auth"]["spiffe_id"] == f"spiffe://{TD}/payments"


def test_hvac_against_trustmesh_up(shop: dict[str, object], tmp_path: Path) -> None:
    """The real hvac client, unmodified, logs in with an SVID from `trustmesh up`: payments
    reads its own secret and uses its transit key, and can do nothing else; orders, with
    no secrets policy, cannot even log in."""
    import hvac
    import hvac.exceptions

    status = shop["status"]
    assert isinstance(status, dict)
    secrets_url = next(c["url"] for c in status["components"] if c["name"] == "secrets")

    async def pem(name: str) -> tuple[str, str, str]:
        async with Workload(shop, name) as (tls, _):
            cert, key, bundle = write_pems(tls.source.context, tmp_path / name, name)
        return str(cert), str(key), str(bundle)

    def client(name: str) -> hvac.Client:
        cert, key, bundle = asyncio.run(pem(name))
        session = spiffe_session(bundle, cert, key)
        return hvac.Client(url=secrets_url, cert=(cert, key), verify=bundle, session=session)

    payments = client("payments")
    payments.auth.cert.login()
    processor = payments.secrets.kv.v2.read_secret_version(
        "payments/processor", raise_on_deleted_version=True
    )
    assert processor["data"]["data"]["api_key"].startswith("demo_")
    USED.add(processor["data"]["data"]["api_key"])
    USED.add(payments.token)
    sealed = payments.secrets.transit.encrypt_data(
        "payments", plaintext=base64.b64encode(b"x").decode()
    )
    assert sealed["data"]["ciphertext"].startswith("vault:v")
    with pytest.raises(hvac.exceptions.Forbidden):
        payments.secrets.kv.v2.create_or_update_secret("payments/processor", {"api_key": "mine"})
    with pytest.raises(hvac.exceptions.Forbidden):
        payments.secrets.transit.encrypt_data("orders", plaintext="eA==")
    with pytest.raises(hvac.exceptions.Forbidden):
        client("orders").auth.cert.login()
    lookup = payments.auth.token.lookup_self()["data"]
    assert lookup["policies"] == ["payments"]
    payments.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        payments.auth.token.lookup_self()
    # dev mode says, where the person who ran `up` sees it, what auto-unseal gives up
    assert "unseals itself from" in str(shop["up_stderr"])
    sealed_status = tm("secrets", "status", "--state", str(shop["state"]), "--json")
    assert json.loads(sealed_status.stdout)["sealed"] is False
    # the declaration read again by the running service (the file `up` was given)
    reloaded = tm("secrets", "reload", "--state", str(shop["state"]), "--json")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "payments" in json.loads(reloaded.stdout)["data"]["identities"]


@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")
def test_hvac_kv_and_transit_against_trustmesh_up(shop: dict[str, object], tmp_path: Path) -> None:
    """The operator (its SVID from the operator socket, as the CLI gets it) drives the
    whole KV v2 and transit API of the running stack with hvac."""
    import hvac
    import hvac.exceptions

    from trustmesh.cli._admin import as_operator

    status = shop["status"]
    assert isinstance(status, dict)
    url = next(c["url"] for c in status["components"] if c["name"] == "secrets")

    async def operator_pem() -> tuple[str, str, str]:
        async with as_operator(Path(str(shop["state"]))) as operator:
            cert, key, bundle = write_pems(operator.tls.source.context, tmp_path, "operator")
        return str(cert), str(key), str(bundle)

    cert, key, bundle = asyncio.run(operator_pem())
    session = spiffe_session(bundle, cert, key)
    client = hvac.Client(url=url, cert=(cert, key), verify=bundle, session=session)
    client.auth.cert.login()
    USED.add(client.token, "first-db-passphrase", "second-db-passphrase")
    kv = client.secrets.kv.v2
    kv.create_or_update_secret("shop/db", {"password": "first-db-passphrase"})
    kv.create_or_update_secret("shop/db", {"password": "second-db-passphrase"}, cas=1)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret("shop/db", {"password": "late"}, cas=1)
    assert kv.read_secret_version("shop/db", version=1, raise_on_deleted_version=True)["data"][
        "data"
    ] == {"password": "first-db-passphrase"}
    assert "db" in kv.list_secrets("shop")["data"]["keys"]
    kv.delete_secret_versions("shop/db", versions=[2])
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("shop/db", raise_on_deleted_version=True)
    kv.undelete_secret_versions("shop/db", versions=[2])
    kv.destroy_secret_versions("shop/db", versions=[1])
    versions = kv.read_secret_metadata("shop/db")["data"]["versions"]
    assert versions["1"]["destroyed"] is True
    assert versions["2"]["deletion_time"] == ""
    transit = client.secrets.transit
    transit.create_key("shop")
    first = transit.encrypt_data("shop", plaintext=base64.b64encode(b"card").decode())["data"]
    transit.rotate_key("shop")
    rewrapped = transit.rewrap_data("shop", ciphertext=first["ciphertext"])["data"]
    assert rewrapped["ciphertext"].startswith("vault:v2:")
    batch = transit.encrypt_data("shop", batch_input=[{"plaintext": "YQ=="}, {"plaintext": "Yg=="}])
    results = batch["data"]["batch_results"]
    opened = transit.decrypt_data(
        "shop", batch_input=[{"ciphertext": r["ciphertext"]} for r in results]
    )
    assert [r["plaintext"] for r in opened["data"]["batch_results"]] == ["YQ==", "Yg=="]
    assert client.auth.token.lookup_self()["data"]["policies"] == ["operator"]
    client.auth.token.revoke_self()
    assert not client.is_authenticated()


def test_hvac_database_credentials_against_trustmesh_up(
    shop: dict[str, object], tmp_path: Path
) -> None:
    """The operator configures a private PostgreSQL in the running stack with hvac; the
    issued role logs in, and is dropped when its lease is revoked and when the token that
    asked for it is revoked."""
    import asyncpg
    import hvac
    from services import private_postgres

    from trustmesh.cli._admin import as_operator

    status = shop["status"]
    assert isinstance(status, dict)
    url = next(c["url"] for c in status["components"] if c["name"] == "secrets")

    async def operator_pem() -> tuple[str, str, str]:
        async with as_operator(Path(str(shop["state"]))) as operator:
            cert, key, bundle = write_pems(operator.tls.source.context, tmp_path, "operator")
        return str(cert), str(key), str(bundle)

    cert, key, bundle = asyncio.run(operator_pem())

    def logged_in() -> hvac.Client:
        session = spiffe_session(bundle, cert, key)
        client = hvac.Client(url=url, cert=(cert, key), verify=bundle, session=session)
        client.auth.cert.login()
        USED.add(client.token)
        return client

    async def login_as(port: int, user: str, password: str) -> Any:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=port, user=user, password=password, database="postgres"
        )
        try:
            return await connection.fetchval("SELECT current_user")
        finally:
            await connection.close()

    with private_postgres() as cluster:
        root_password = secrets.token_hex(16)
        USED.add(root_password)

        async def make_root() -> None:
            admin = await cluster.admin()
            await admin.execute(f"CREATE ROLE shoproot SUPERUSER LOGIN PASSWORD '{root_password}'")
            await admin.close()

        async def exists(name: str) -> bool:
            admin = await cluster.admin()
            try:
                return bool(await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name))
            finally:
                await admin.close()

        asyncio.run(make_root())
        client = logged_in()
        database = client.secrets.database
        database.configure(
            "shopdb",
            plugin_name="postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{cluster.port}/postgres",
            username="shoproot",
            password=root_password,
            allowed_roles=["reader"],
        )
        database.create_role(
            "reader",
            db_name="shopdb",
            creation_statements=[
                "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
            ],
            default_ttl=300,
        )
        first = database.generate_credentials("reader")
        user, password = first["data"]["username"], first["data"]["password"]
        USED.add(password)
        assert asyncio.run(login_as(cluster.port, user, password)) == user
        client.sys.revoke_lease(first["lease_id"])
        assert not asyncio.run(exists(user))
        second = database.generate_credentials("reader")["data"]["username"]
        assert asyncio.run(exists(second))
        client.auth.token.revoke_self()  # its leases go with it
        assert not asyncio.run(exists(second))
        cleanup = logged_in().secrets.database
        cleanup.delete_role("reader")
        cleanup.delete_connection("shopdb")


async def test_payments_may_not_call_orders(shop: dict[str, object]) -> None:
    async with Workload(shop, "payments") as (tls, discovery):
        with pytest.raises(NotFoundError):
            await discovery.lookup("orders")  # discovery does not even say where it is
        status = shop["status"]
        assert isinstance(status, dict)
        orders_url = next(c["url"] for c in status["components"] if c["name"] == "orders")
        async with ServiceClient(tls, orders_url, f"spiffe://{TD}/orders") as orders:
            refused = await orders.get("/orders/ord_1")
        assert refused.status == 403
        assert refused.json()["error"] == "forbidden"  # one spelling of 403 everywhere

    def payments_denied(found: list[dict[str, Any]]) -> bool:
        return any(
            e["status_detail"] == "policy-deny"
            and e["unmapped"]["trustmesh"]["peer_spiffe_id"] == f"spiffe://{TD}/payments"
            for e in found
        )

    assert payments_denied(_events(shop, "orders", payments_denied))


async def test_the_identity_provider_issues_a_bound_token_to_a_workload(
    shop: dict[str, object],
) -> None:
    status = shop["status"]
    assert isinstance(status, dict)
    auth = next(c for c in status["components"] if c["name"] == "auth")
    assert auth["healthy"]
    assert auth["spiffe_id"] == f"spiffe://{TD}/trustmesh/auth"
    async with (
        Workload(shop, "storefront") as (tls, _),
        ServiceClient(tls, auth["url"], auth["spiffe_id"]) as idp,
    ):
        got = await idp.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": "storefront"},
        )
        assert got.status == 200, got.body
        token = got.json()["access_token"]
        jwks = (await idp.get("/jwks.json")).json()
    import jwt as pyjwt

    kid = pyjwt.get_unverified_header(token)["kid"]
    key = pyjwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid)).key
    claims = pyjwt.decode(
        token, key, algorithms=["ES256"], audience=f"spiffe://{TD}/orders", issuer=auth["issuer"]
    )
    assert claims["sub"] == f"spiffe://{TD}/storefront"


def _events(
    shop: dict[str, object], name: str, until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """``name``'s event log, read again until ``until`` holds of it (at most 10 s): with
    the collector running, a component's delivery thread writes its log a spooled batch
    at a time, a few milliseconds after the request."""
    path = Path(str(shop["state"])) / "events" / f"{name}.jsonl"
    deadline = time.monotonic() + 10
    while True:
        found = [json.loads(line) for line in path.read_text().splitlines()]
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


async def test_users_orders_are_theirs_and_the_chain_is_recorded(shop: dict[str, object]) -> None:
    where = ("--config", str(shop["config"]), "--state", str(shop["state"]))
    secrets = {}
    for user in ("alice", "bob"):
        made = tm(
            "auth",
            "client",
            "add",
            user,
            "--method",
            "client_secret_basic",
            "--audience",
            "orders",
            *where,
        )
        assert made.returncode == 0, made.stderr
        secrets[user] = made.stdout.strip().splitlines()[-1]
    added = time.monotonic()
    workload = Workload(shop, "storefront")
    async with workload as (tls, discovery):
        (endpoint,) = await discovery.lookup("orders")

        async def user_token(user: str) -> str:
            basic = base64.b64encode(f"{user}:{secrets[user]}".encode()).decode()
            while True:
                got = await workload.auth.http.post(
                    "/oauth2/token",
                    data={"grant_type": "client_credentials"},
                    headers={"Authorization": f"Basic {basic}"},
                )
                # the provider may hold an earlier miss in its client cache a moment longer
                if got.status != 401 or time.monotonic() - added > CLIENT_CACHE_SECONDS + 0.5:
                    break
                await asyncio.sleep(0.1)
            assert got.status == 200, got.body
            return str(got.json()["access_token"])

        tokens = {u: await user_token(u) for u in ("alice", "bob")}

        def as_user(user: str) -> ServiceClient:
            async def provider(_force: bool) -> str:
                return tokens[user]

            return ServiceClient(tls, endpoint.url, endpoint.spiffe_id, token=provider)

        async with as_user("alice") as alice, as_user("bob") as bob:
            placed = await alice.post("/orders", json={"item": "mug", "quantity": 1})
            assert placed.status == 201, placed.body
            order = placed.json()
            assert order["owner"] == "alice"
            assert (await alice.get(f"/orders/{order['id']}")).status == 200
            refused = await bob.get(f"/orders/{order['id']}")
            assert refused.status == 403
    # orders recorded bob's refusal; payments saw alice as the subject, orders as the actor

    def bobs(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in found
            if e["class_uid"] == 3003 and e["unmapped"]["trustmesh"].get("sub") == "bob"
        ]

    def alices(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e["unmapped"]["trustmesh"]
            for e in found
            if e["unmapped"]["trustmesh"].get("sub") == "alice"
        ]

    denied = bobs(_events(shop, "orders", lambda found: bool(bobs(found))))
    assert denied
    assert denied[-1]["unmapped"]["trustmesh"]["decision"] == "deny"
    charged = alices(_events(shop, "payments", lambda found: bool(alices(found))))
    assert charged
    assert charged[-1]["attributes"]["actor"] == f"spiffe://{TD}/orders"
    assert charged[-1]["client_id"] == "orders"


def test_first_up_creates_demo_users_and_shows_their_credentials_once(
    shop: dict[str, object],
) -> None:
    output = str(shop["up_output"])
    assert "Demo users (shown once" in output
    passwords = re.findall(r"password: (\S+)", output)
    assert len(passwords) == 3
    assert "otpauth://totp/" in output  # the admin has MFA from the start
    where = ("--config", str(shop["config"]), "--state", str(shop["state"]))
    users = {
        u["username"]: u for u in json.loads(tm("auth", "user", "list", "--json", *where).stdout)
    }
    assert users["shopper"]["roles"] == ["customer"]
    assert users["support"]["roles"] == ["support"]
    assert users["admin"]["roles"] == ["admin"]
    assert users["admin"]["mfa"] is True
    for path in Path(str(shop["state"])).rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            assert not any(p.encode() in data for p in passwords), path


def test_trustmesh_call_tries_the_shop_from_a_shell(shop: dict[str, object]) -> None:
    where = ("--config", str(shop["config"]), "--state", str(shop["state"]))
    placed = tm(
        "call", "orders", "POST", "/orders", "--json", '{"item": "tea", "quantity": 1}', *where
    )
    assert placed.returncode == 0, placed.stdout + placed.stderr
    status_line, _, body = placed.stdout.partition("\n")
    assert status_line == "HTTP 201"
    order = json.loads(body)
    assert order["charge"].startswith("ch_")
    read = tm("call", "orders", "GET", f"/orders/{order['id']}", *where)
    assert read.returncode == 0
    assert json.loads(read.stdout.partition("\n")[2])["id"] == order["id"]
    # a path the declaration does not allow the storefront: the answer is shown, exit 1
    listed = tm("call", "orders", "GET", "/orders", *where)
    assert listed.returncode == 1
    assert listed.stdout.startswith("HTTP 403")
    assert '"forbidden"' in listed.stdout
    # payments may not call orders: discovery will not even say where it is
    refused = tm("call", "orders", "GET", f"/orders/{order['id']}", "--as", "payments", *where)
    assert refused.returncode != 0
    assert "orders" in refused.stderr
    # bad usage changes nothing and exits 2
    for bad in (
        ("call", "orders", "FETCH", "/orders"),
        ("call", "orders", "GET", "orders"),
        ("call", "nosuch", "GET", "/x"),
        ("call", "orders", "POST", "/orders", "--json", "{not json"),
    ):
        result = tm(*bad, *where)
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        assert result.stderr.strip()


REDIRECT = "https://shop.example/cb"


def _demo_credentials(shop: dict[str, object]) -> dict[str, tuple[str, str]]:
    """(password, TOTP secret) of each demo user, as `up` showed them once."""
    return demo_credentials(str(shop["up_output"]))


_OTP_STEPS: dict[str, int] = {}  # the last TOTP step each user signed in with


def _sign_in(shop: dict[str, object], username: str) -> str:
    """The demo user signs in on the provider's public listener (code + PKCE, TOTP for the
    admin) as the shop's web client; the access token is for the gateway."""
    password, secret = _demo_credentials(shop)[username]
    otp = ""
    if secret:
        key = base64.b32decode(secret + "=" * (-len(secret) % 8))
        # a code is taken once (replay refused): a second sign-in in the same 30 s step
        # waits for the next one
        step = int(time.time() // 30)
        if _OTP_STEPS.get(username, -1) >= step:
            time.sleep((step + 1) * 30 - time.time() + 0.5)
            step = int(time.time() // 30)
        _OTP_STEPS[username] = step
        otp = crypto.totp_code(key, time.time())
    status = shop["status"]
    assert isinstance(status, dict)
    public = next(c for c in status["components"] if c["name"] == "auth")["public_url"]
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(Path(str(shop["state"])) / "edge" / "ca.pem")
        tokens = code_flow(browser, public, "shop-web", REDIRECT, username, password, otp)
    USED.tokens(tokens)
    USED.add(password, secret, otp)
    return str(tokens["access_token"])


def test_the_shop_through_the_gateway(shop: dict[str, object]) -> None:
    """A customer orders and reads (and lists) only their own orders; support reads any
    order but cannot refund; only an admin who signed in with TOTP reaches the admin routes; and a
    user's token presented to a service directly, around the gateway, gets nothing."""
    config = load_config(Path(str(shop["config"])))
    state = Path(str(shop["state"]))
    admin_call(
        config,
        state,
        "POST",
        "/admin/v1/clients",
        {
            "client_id": "shop-web",
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": [f"spiffe://{TD}/trustmesh/gateway"],
        },
    )
    admin_call(
        config,
        state,
        "POST",
        "/admin/v1/users",
        {"username": "carol", "password": "carol's long passphrase", "roles": ["customer"]},
    )
    status = shop["status"]
    assert isinstance(status, dict)
    gateway = next(c for c in status["components"] if c["name"] == "gateway")["url"]
    ca = str(state / "edge" / "ca.pem")
    shopper = _sign_in(shop, "shopper")
    support = _sign_in(shop, "support")
    admin = _sign_in(shop, "admin")

    def call(method: str, path: str, token: str | None, **kw: Any) -> requests.Response:
        with requests.Session() as s:
            s.trust_env = False
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return s.request(method, gateway + path, headers=headers, verify=ca, timeout=30, **kw)

    assert call("GET", "/items/tea", None).json()["item"] == "tea"  # the catalogue is public
    placed = call("POST", "/orders", shopper, json={"item": "tea", "quantity": 1})
    assert placed.status_code == 201, placed.text
    order = placed.json()["id"]
    assert call("GET", f"/orders/{order}", shopper).status_code == 200
    assert call("POST", f"/orders/{order}/refund", shopper).status_code == 403  # the edge
    # another customer may not read it (the orders service decides, per order)
    carol = _sign_in_with(shop, "carol", "carol's long passphrase")
    assert call("GET", f"/orders/{order}", carol).status_code == 403
    # each customer lists their own orders; support, who reads any order, lists them all
    assert [o["id"] for o in call("GET", "/orders", shopper).json()["orders"]] == [order]
    assert call("GET", "/orders", carol).json()["orders"] == []
    assert order in [o["id"] for o in call("GET", "/orders", support).json()["orders"]]
    # a body that breaks the shop's contract (shop.openapi.yaml) is refused at the edge
    bad = call("POST", "/orders", shopper, json={"item": "tea"})
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "invalid_request",
        "message": "the request is invalid at body/quantity: required",
        "location": "body/quantity",
        "rule": "required",
    }
    unknown = call("POST", "/orders", shopper, json={"item": "tea", "quantity": 1, "x": "<b>"})
    assert (unknown.status_code, unknown.json()["rule"]) == (400, "additionalProperties")
    assert b"<b>" not in unknown.content  # the offending value is never echoed
    # the service's own error comes back in the gateway's shape, nothing of its framework's
    missing = call("POST", "/orders", shopper, json={"item": "nonesuch", "quantity": 1})
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "message": "the service has no such resource"}
    # another spelling of a refund is no operation of the shop: refused at the edge
    assert call("POST", f"/orders/{order}/refund/", shopper).status_code == 400
    assert call("POST", f"/orders/{order}/Refund", shopper).status_code == 404
    # support reads any order, refunds none, places none
    assert call("GET", f"/orders/{order}", support).json()["id"] == order
    assert call("POST", f"/orders/{order}/refund", support).status_code == 403
    assert call("GET", "/admin/orders", support).status_code == 403
    # the admin signed in with TOTP: admin routes and refunds
    listed = call("GET", "/admin/orders", admin)
    assert listed.status_code == 200, listed.text
    assert order in [o["id"] for o in listed.json()["orders"]]
    assert call("POST", f"/orders/{order}/refund", admin).json()["refunded"] is True
    assert call("GET", "/orders/x", None).status_code == 401

    def mfa_denied(found: list[dict[str, Any]]) -> bool:
        return any(
            e["status_detail"] == "policy-deny"
            and e["unmapped"]["trustmesh"]["attributes"].get("policy") == "admin-routes-need-mfa"
            for e in found
        )

    gateway_events = _events(shop, "gateway", mfa_denied)
    assert mfa_denied(gateway_events)
    assert any(e["status_detail"] == "request-forwarded" for e in gateway_events)
    # the admin port counts it all (loopback, plain HTTP, for a local Prometheus)
    metrics_url = next(c for c in status["components"] if c["name"] == "gateway")["metrics_url"]
    scraped = requests.get(metrics_url, timeout=10).text
    assert 'trustmesh_gateway_decisions_total{decision="deny",reason="policy-deny"}' in scraped


def _trace(
    shop: dict[str, object], trace_id: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """``trustmesh audit trace --json``, asked again until ``until`` holds of it (at most
    20 s: each hop exports its spans a fraction of a second after it answers)."""
    where = ("--config", str(shop["config"]), "--state", str(shop["state"]))
    deadline = time.monotonic() + 20
    while True:
        shown = tm("audit", "trace", trace_id, "--json", *where)
        doc: dict[str, Any] = json.loads(shown.stdout) if shown.stdout.strip() else {}
        if (doc and until(doc)) or time.monotonic() > deadline:
            return doc
        time.sleep(0.3)


def test_one_request_is_one_trace_with_every_decision(shop: dict[str, object]) -> None:
    """A shopper's order crosses the gateway, orders, inventory and payments (which seals
    the card at the secrets service), each call made on the shopper's behalf with a
    token exchanged at the provider: one trace, each hop a span with its decision and
    reason, in the right tree; ``trustmesh audit trace`` shows it; a real OTLP receiver
    gets the same spans; the gateway told the client the trace (``traceresponse``)."""
    status = shop["status"]
    assert isinstance(status, dict)
    gateway = next(c for c in status["components"] if c["name"] == "gateway")["url"]
    ca = str(Path(str(shop["state"])) / "edge" / "ca.pem")
    shopper = _sign_in(shop, "shopper")
    with requests.Session() as s:
        s.trust_env = False
        placed = s.post(
            gateway + "/orders",
            json={"item": "tea", "quantity": 1, "card_number": CARD},
            headers={"Authorization": f"Bearer {shopper}"},
            verify=ca,
            timeout=30,
        )
    assert placed.status_code == 201, placed.text
    told = trace.parse(placed.headers["traceresponse"])
    assert told is not None
    assert told.sampled

    def whole(doc: dict[str, Any]) -> bool:
        services = [(s["service"], s["kind"]) for s in doc["spans"]]
        wanted = {"gateway", "orders", "inventory", "payments", "auth", "secrets"}
        return {name for name, kind in services if kind == "server"} >= wanted

    doc = _trace(shop, told.trace_id, whole)
    logs = Path(str(shop["state"])) / "logs"
    assert whole(doc), (
        " ".join(sorted({f"{s['service']}:{s['kind']}" for s in doc["spans"]})),
        (logs / "secrets.log").read_text()[-2000:],
        (logs / "audit.log").read_text()[-2000:],
    )
    spans = {s["span_id"]: s for s in doc["spans"]}
    assert {s["trace_id"] for s in spans.values()} == {told.trace_id}

    def server(service: str) -> list[dict[str, Any]]:
        return [s for s in spans.values() if s["service"] == service and s["kind"] == "server"]

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return spans[span["parent_span_id"]]

    (edge,) = server("gateway")
    assert edge["span_id"] == told.span_id
    assert edge["parent_span_id"] is None
    assert edge["name"] == "POST /orders"
    (orders,) = server("orders")
    assert parent(orders) is edge
    for callee in ("inventory", "payments"):
        (hop,) = server(callee)
        call = parent(hop)  # orders' client span of that call ...
        assert (call["service"], call["kind"], parent(call)) == ("orders", "client", orders)
        # ... under which orders exchanged the shopper's token for one to the callee
        exchanges = [
            s
            for s in server("auth")
            if parent(parent(s))["span_id"] == call["span_id"] and s["name"] == "POST /oauth2/token"
        ]
        assert len(exchanges) == 1, (callee, doc["spans"])
    # payments sealed the card at the secrets service: a hop of its own
    (vault,) = [s for s in server("secrets") if "transit/encrypt" in s["name"]]
    assert (parent(vault)["service"], parent(parent(vault))) == ("payments", server("payments")[0])
    # every server hop decided, and says what and why; the reporter is who sent the span
    for span in [edge, orders, *server("inventory"), *server("payments"), vault]:
        assert span["attributes"]["trustmesh.decision"] == "allow", span
        assert span["attributes"]["trustmesh.reason"], span
        assert span["attributes"]["http.response.status_code"] < 400, span
        assert span["reporter"].endswith("/" + span["service"]), span
    # the audit log's decisions of the trace come with it
    deciders = {
        e["metadata"]["product"]["feature"]["name"]
        for e in doc["events"]
        if e["unmapped"]["trustmesh"].get("decision") == "allow"
    }
    # the provider's too: it names no trace, the request it serves does
    assert deciders >= {"gateway", "orders", "inventory", "payments", "auth"}
    shown = tm(
        "audit",
        "trace",
        told.trace_id,
        "--config",
        str(shop["config"]),
        "--state",
        str(shop["state"]),
    )
    assert shown.returncode == 0, shown.stderr
    # the same spans reached the OTLP receiver, each naming the workload that reported it
    otlp = shop["otlp"]
    assert isinstance(otlp, OtlpReceiver)
    received = {s["span_id"]: s for s in otlp.trace(told.trace_id, len(spans))}
    assert set(received) >= set(spans)
    for span_id, span in received.items():
        assert span["parent_span_id"] == spans[span_id]["parent_span_id"]
        assert span["resource"]["trustmesh.reporter"] == spans[span_id]["reporter"]
    assert not otlp.refused
    for word in ("gateway", "orders", "inventory", "payments", "auth", "POST /charges"):
        assert word in shown.stdout, shown.stdout


def test_a_refused_request_is_traced_and_told(shop: dict[str, object]) -> None:
    """A request the edge refuses: its span says why (the decision, the reason)."""
    status = shop["status"]
    assert isinstance(status, dict)
    gateway = next(c for c in status["components"] if c["name"] == "gateway")["url"]
    ca = str(Path(str(shop["state"])) / "edge" / "ca.pem")
    with requests.Session() as s:
        s.trust_env = False
        refused = s.get(gateway + "/orders/x", verify=ca, timeout=30)
    assert refused.status_code == 401
    told = trace.parse(refused.headers["traceresponse"])
    assert told is not None
    doc = _trace(shop, told.trace_id, lambda doc: bool(doc["spans"]))
    (edge,) = doc["spans"]
    assert edge["attributes"]["trustmesh.decision"] == "deny"
    assert edge["attributes"]["trustmesh.reason"] == "token-missing"
    assert edge["attributes"]["http.response.status_code"] == 401


def _sign_in_with(shop: dict[str, object], username: str, password: str) -> str:
    status = shop["status"]
    assert isinstance(status, dict)
    public = next(c for c in status["components"] if c["name"] == "auth")["public_url"]
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(Path(str(shop["state"])) / "edge" / "ca.pem")
        tokens = code_flow(browser, public, "shop-web", REDIRECT, username, password)
    USED.tokens(tokens)
    USED.add(password)
    return str(tokens["access_token"])


async def test_a_users_token_does_not_walk_around_the_gateway(shop: dict[str, object]) -> None:
    """The bypass: a workload that may call orders presents a user's token for the gateway
    straight to orders. The token is for the gateway, not bound to any certificate and not
    signed by the gateway: 401, and orders records why."""
    token = await asyncio.to_thread(_sign_in, shop, "shopper")
    async with Workload(shop, "storefront") as (tls, discovery):
        (endpoint,) = await discovery.lookup("orders")

        async def users_token(_force: bool) -> str:
            return token

        async with ServiceClient(tls, endpoint.url, endpoint.spiffe_id, token=users_token) as bare:
            refused = await bare.post("/orders", json={"item": "tea", "quantity": 1})
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    why = {"token-wrong-audience", "token-not-bound", "token-wrong-issuer"}
    found = _events(shop, "orders", lambda found: any(e["status_detail"] in why for e in found))
    assert {e["status_detail"] for e in found} & why


async def _alerts(audit: ServiceClient, title: str) -> list[dict[str, Any]]:
    """The stored alerts of that title (read as the operator, in this process: the CLI's
    start-up would blur the latency measured)."""
    answer = await audit.get("/v1/alerts?limit=1000")
    assert answer.status == 200, answer.body
    return [a for a in answer.json()["alerts"] if a["title"] == title]


async def test_attacks_on_the_demo_raise_their_alerts(shop: dict[str, object]) -> None:
    """Ten failed logins for one account: exactly one brute-force alert, within 2 s of
    the tenth; a revoked access token presented at the gateway: a revoked-token alert."""
    from trustmesh.cli._admin import as_operator

    status = shop["status"]
    assert isinstance(status, dict)
    url = next(c["url"] for c in status["components"] if c["name"] == "audit")
    async with (
        as_operator(Path(str(shop["state"]))) as operator,
        ServiceClient(operator.tls, url, f"spiffe://{TD}/trustmesh/audit") as audit,
    ):
        await _attack(shop, audit)


async def _attack(shop: dict[str, object], audit: ServiceClient) -> None:
    config = load_config(Path(str(shop["config"])))
    client_id = f"attack-{secrets.token_hex(3)}"
    body = {
        "client_id": client_id,
        "method": "none",
        "redirect_uris": [REDIRECT],
        "audiences": [f"spiffe://{TD}/trustmesh/gateway"],
    }
    await asyncio.to_thread(
        admin_call, config, Path(str(shop["state"])), "POST", "/admin/v1/clients", body
    )
    status = shop["status"]
    assert isinstance(status, dict)
    urls = {c["name"]: c for c in status["components"]}
    public = urls["auth"]["public_url"]
    ca = str(Path(str(shop["state"])) / "edge" / "ca.pem")
    target = f"nobody{secrets.token_hex(4)}"
    client = OAuth2Session(
        client_id=client_id,
        redirect_uri=REDIRECT,
        scope="openid",
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
    )
    start, _ = client.create_authorization_url(
        public + "/oauth2/authorize", code_verifier=generate_token(48), nonce=generate_token(16)
    )

    def guess_ten_times() -> float:
        with requests.Session() as browser:
            browser.trust_env = False
            browser.verify = ca
            form = FormLogin(browser, public)
            for _ in range(10):
                assert form.login(start, target, "not the password at all").status_code != 303
        return time.monotonic()

    tenth = await asyncio.to_thread(guess_ten_times)
    brute: list[dict[str, Any]] = []
    while not brute and time.monotonic() < tenth + 10:
        brute = [
            a
            for a in await _alerts(audit, "Brute-force login against one account")
            if a["group"].get("unmapped.trustmesh.attributes.login") == target
        ]
    latency = time.monotonic() - tenth
    assert brute, "no brute-force alert"
    assert latency < 2, f"the alert came {latency:.1f} s after the tenth failure"
    await asyncio.sleep(1)
    again = await _alerts(audit, "Brute-force login against one account")
    assert [a["uid"] for a in again if a["uid"] == brute[0]["uid"]] == [brute[0]["uid"]]
    assert len([a for a in again if a["group"] == brute[0]["group"]]) == 1

    # a revoked access token presented again at the gateway
    def sign_in() -> str:
        password, _ = _demo_credentials(shop)["support"]
        with requests.Session() as browser:
            browser.trust_env = False
            browser.verify = ca
            tokens = code_flow(browser, public, client_id, REDIRECT, "support", password)
        USED.tokens(tokens)
        return str(tokens["access_token"])

    token = await asyncio.to_thread(sign_in)

    def revoke_and_present() -> int:
        with requests.Session() as s:
            s.trust_env = False
            s.verify = ca
            revoked = s.post(
                public + "/oauth2/revoke", data={"token": token, "client_id": client_id}
            )
            assert revoked.status_code == 200, revoked.text
            deadline = time.monotonic() + 20
            while True:  # the gateway hears of the revocation (pushed, or at its next poll)
                answer = s.get(
                    urls["gateway"]["url"] + "/orders",
                    headers={"Authorization": f"Bearer {token}"},
                )
                if answer.status_code == 401 or time.monotonic() > deadline:
                    return answer.status_code
                time.sleep(0.5)

    assert await asyncio.to_thread(revoke_and_present) == 401
    revoked: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not revoked and time.monotonic() < deadline:
        revoked = await _alerts(audit, "Revoked token presented")
    assert revoked


async def test_a_diagnostic_made_to_probe_the_network_is_stopped_and_alerted(
    shop: dict[str, object],
) -> None:
    """orders' reachability diagnostic (admins only) asked for a host its enforced runtime
    profile does not declare: refused inside the process before any packet leaves,
    recorded, delivered and alerted on; and the whole run of the shop above, under the
    same enforced profiles, broke none besides."""
    from trustmesh.cli._admin import as_operator

    status = shop["status"]
    assert isinstance(status, dict)
    urls = {c["name"]: c for c in status["components"]}
    ca = str(Path(str(shop["state"])) / "edge" / "ca.pem")
    probe = "/admin/reachability?host=192.0.2.10&port=22"  # TEST-NET-1: declared nowhere

    def ask(token: str) -> requests.Response:
        with requests.Session() as s:
            s.trust_env = False
            headers = {"Authorization": f"Bearer {token}"}
            return s.get(urls["gateway"]["url"] + probe, headers=headers, verify=ca, timeout=30)

    support, admin = _sign_in(shop, "support"), _sign_in(shop, "admin")
    assert (await asyncio.to_thread(ask, support)).status_code == 403  # the edge
    answer = await asyncio.to_thread(ask, admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["reachable"] is False
    assert "trustmesh runtime profile: connect not allowed" in answer.json()["refused"]

    title = "Runtime profile violated in a service"
    async with (
        as_operator(Path(str(shop["state"]))) as operator,
        ServiceClient(
            operator.tls, urls["audit"]["url"], f"spiffe://{TD}/trustmesh/audit"
        ) as audit,
    ):
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            found = await _alerts(audit, title)
            await asyncio.sleep(0.2)
    (alert,) = found
    assert alert["group"] == {
        "unmapped.trustmesh.spiffe_id": f"spiffe://{TD}/orders",
        "unmapped.trustmesh.reason": "runtime-connect-denied",
    }

    def runtime(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if str(e["status_detail"]).startswith("runtime-")]

    orders = runtime(_events(shop, "orders", lambda found: bool(runtime(found))))
    others = [runtime(_events(shop, name, lambda _: True)) for name in ("inventory", "payments")]
    assert others == [[], []]
    (refused,) = orders
    assert refused["unmapped"]["trustmesh"]["decision"] == "deny"
    assert refused["unmapped"]["trustmesh"]["attributes"]["target"] == "192.0.2.10:22"


async def test_the_stack_delivers_its_events_and_alerts_on_what_it_saw(
    shop: dict[str, object],
) -> None:
    """Every component delivers what it records to the collector (not only to its local
    file); a denied call of payments to orders raises the lateral-movement alert, whose
    response (a dry run in the demo) is recorded."""
    state = str(shop["state"])
    status = shop["status"]
    assert isinstance(status, dict)
    urls = {c["name"]: c["url"] for c in status["components"]}
    with requests.Session() as session:  # through the gateway to inventory
        session.trust_env = False
        ca = str(Path(state) / "edge" / "ca.pem")
        got = session.get(urls["gateway"] + "/items/tea", verify=ca, timeout=30)
        assert got.status_code == 200
    async with Workload(shop, "payments") as (tls, _):
        orders = ServiceClient(tls, urls["orders"], f"spiffe://{TD}/orders")
        async with orders:
            assert (await orders.get("/orders/ord_1")).status == 403
    delivered: set[str] = set()
    deadline = time.monotonic() + 30
    wanted = {"identity", "auth", "gateway", "secrets", "inventory", "orders", "audit"}
    while not wanted <= delivered and time.monotonic() < deadline:
        found = tm("audit", "events", "--state", state, "--json", "--limit", "1000")
        assert found.returncode == 0, found.stderr
        delivered |= {
            json.loads(line)["metadata"]["product"]["feature"]["name"]
            for line in found.stdout.splitlines()
        }
        time.sleep(0.5)
    assert wanted <= delivered, delivered

    payments = f"spiffe://{TD}/payments"
    alerts = [
        json.loads(line)
        for line in tm(
            "audit", "alerts", "--state", state, "--json", "--level", "high"
        ).stdout.splitlines()
    ]
    assert all(a["level"] in ("high", "critical") for a in alerts)
    assert tm("audit", "alerts", "--state", state, "--level", "loud").returncode != 0
    lateral = [a for a in alerts if a["title"].startswith("Denied service-to-service call")]
    assert any(a["group"].get("unmapped.trustmesh.peer_spiffe_id") == payments for a in lateral)
    findings = tm("audit", "events", "--state", state, "--json", "--class", "2004")
    assert findings.returncode == 0, findings.stderr
    assert any(
        json.loads(line)["unmapped"]["trustmesh"]["attributes"]["alert_uid"] == lateral[0]["uid"]
        for line in findings.stdout.splitlines()
    )
    responses = [
        json.loads(line)
        for line in tm("audit", "response", "list", "--state", state, "--json").stdout.splitlines()
    ]
    assert any(
        r["action"] == "suspend-spiffe-id" and r["target"] == payments and r["dry_run"]
        for r in responses
    ), responses


def _scrape(url: str) -> dict[str, float]:
    """``/metrics`` as ``name{labels}`` → value (Prometheus' own text parser)."""
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_every_component_serves_its_metrics(shop: dict[str, object]) -> None:
    """Each component's Prometheus metrics on loopback, named in `trustmesh status`: its
    decisions by outcome and reason, its SVID's time left, its audit delivery (spool
    depth, delivered, dropped); the collector's alert and detection counts."""
    where = ("--config", str(shop["config"]), "--state", str(shop["state"]))
    status = json.loads(tm("status", *where, "--json").stdout)
    rows = {c["name"]: c for c in status["components"]}
    for name in ("auth", "secrets", "audit", "gateway"):
        url = rows[name].get("metrics_url")
        assert isinstance(url, str), (name, rows[name])
        assert url.startswith("http://127.0.0.1:"), url  # loopback only
        found = _scrape(url)
        left = found[f"trustmesh_{name}_certificate_seconds_left"]
        assert 0 < left <= 24 * 3600, (name, left)
        assert any(k.startswith(f"trustmesh_{name}_decisions_total{{") for k in found), name
        if name != "audit":  # the collector delivers to no one
            assert found[f"trustmesh_{name}_audit_spooled_events"] >= 0
            assert found[f"trustmesh_{name}_audit_dropped_total"] == 0
            assert found[f"trustmesh_{name}_audit_delivered_total"] > 0, name
        assert requests.get(url.replace("/metrics", "/nope"), timeout=10).status_code == 404
    auth = _scrape(str(rows["auth"]["metrics_url"]))
    allowed = [v for k, v in auth.items() if "decisions_total" in k and 'decision="allow"' in k]
    assert sum(allowed) > 0
    audit = _scrape(str(rows["audit"]["metrics_url"]))
    assert audit["trustmesh_audit_detected_events_total"] > 0
    assert audit["trustmesh_audit_alerts_total"] >= 0


def test_no_event_carries_a_secret_the_tests_used(shop: dict[str, object]) -> None:
    """Every event the stack recorded in this module — each component's log and the
    collector's ledger, spools included — is searched for every token, password, TOTP
    secret and code, card and secret value the tests above used (and again once the
    stack is down: :func:`shop`)."""
    USED.add(CARD)
    for password, secret in _demo_credentials(shop).values():
        USED.add(password, secret)
    state = Path(str(shop["state"]))
    records = b"".join(p.read_bytes() for p in event_files(state))
    assert b"alert-raised" in records or b"policy-deny" in records  # the logs are there
    assert_no_secret_recorded(state, USED, at_least=8)  # the tests above ran and signed in


def test_down_leaves_no_process(shop: dict[str, object]) -> None:
    state = Path(str(shop["state"]))
    pids = []
    for path in (state / "run").glob("*.json"):
        doc = json.loads(path.read_text())
        if "start_time" in doc:
            pids.append((doc["pid"], doc["start_time"]))
    identity = json.loads((state / "run" / "identity.json").read_text())["pid"]
    children = Path(f"/proc/{identity}/task/{identity}/children").read_text().split()
    from trustmesh.identity.attestation import start_time_of

    pids += [(int(p), start_time_of(int(p))) for p in children]
    assert len(pids) >= 5
    assert tm("down", "--state", str(state)).returncode == 0
    assert not any(process_alive(p, s) for p, s in pids)
