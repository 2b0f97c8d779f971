"""TLS to the shared stores with certificates from the workload CA: `trustmesh identity
server-cert` issues a database's or a cache's certificate through the identity
service's admin API (the key made by the command, never sent), and a component that
connects with ``sslmode=verify-full`` or ``rediss://`` checks the server against its
SVID's trust bundle and the host it dialled, and presents its SVID — which the servers
here require (PostgreSQL's ``clientcert=verify-ca``, Redis's ``tls-auth-clients yes``).
Real servers on 127.0.0.1, a real identity service, real certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from clirig import events_of, identity_on, register, tm
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from services import PrivatePostgres, ServerTLS, private_postgres
from sqlalchemy import text

from trustmesh import crypto
from trustmesh.cli.provision import provision
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError
from trustmesh.sdk import store_tls
from trustmesh.sdk.x509source import X509Context
from trustmesh.store import create_engine
from trustmesh.testing import FixedSVIDSource, PrivateRedis, until

pytestmark = pytest.mark.xdist_group("store_tls")

TD = "tls.example"
SECRETS = f"spiffe://{TD}/trustmesh/secrets"
OPERATOR = f"spiffe://{TD}/trustmesh/operator"


@dataclass(frozen=True)
class Rig:
    args: tuple[str, ...]
    state: Path
    certs: Path
    svid: X509Context
    cluster: PrivatePostgres
    app_url: str  # the app role's URL, without sslmode
    owner_password: str
    redis: PrivateRedis


async def _roles(cluster: PrivatePostgres, app_password: str, owner_password: str) -> None:
    admin = await cluster.admin()
    try:
        await admin.execute(f"CREATE ROLE app LOGIN PASSWORD '{app_password}'")
        await admin.execute("CREATE DATABASE app OWNER app")
        await admin.execute(f"CREATE ROLE tm_owner LOGIN CREATEROLE PASSWORD '{owner_password}'")
        await admin.execute("CREATE DATABASE shop OWNER tm_owner")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config, state, certs = root / "trustmesh.yaml", root / "state", root / "certs"
    config.write_text(f"trust_domain: {TD}\ndev: true\n")
    args = ("--config", str(config), "--state", str(state))
    try:
        with identity_on(config, state) as identity:
            register(identity, SECRETS)
            svid = asyncio.run(FixedSVIDSource.fetched(identity.address, SECRETS)).context
            made = tm("identity", "server-cert", "--ip", "127.0.0.1", "--dns", "localhost",
                      "--out", str(certs), *args)  # fmt: skip
            assert made.returncode == 0, made.stdout + made.stderr
            files = ServerTLS(certs / "server.crt", certs / "server.key", certs / "ca.crt")
            redis = PrivateRedis(root, tls=(files.cert, files.key, files.ca))
            redis.start()
            try:
                with private_postgres(files, password_only=("tm_owner",)) as cluster:
                    app_password, owner_password = secrets.token_hex(16), secrets.token_hex(16)
                    asyncio.run(_roles(cluster, app_password, owner_password))
                    app_url = (
                        f"postgresql+asyncpg://app:{app_password}@127.0.0.1:{cluster.port}/app"
                    )
                    yield Rig(args, state, certs, svid, cluster, app_url, owner_password, redis)
            finally:
                redis.kill()
    finally:
        store_tls.present(None)
        shutil.rmtree(root, ignore_errors=True)


async def _ssl_facts(url: str) -> tuple[bool, str | None]:
    """Over ``url``: whether this connection is TLS, and the serial of the client
    certificate the server verified (hex)."""
    engine = create_engine(url, tls=store_tls.postgres)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT ssl, client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).one()
    finally:
        await engine.dispose()
    return bool(row[0]), None if row[1] is None else f"{int(row[1]):x}"


def _refused(url: str) -> str:
    """The error connecting over ``url`` ends in (its whole chain, as text)."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the chain is checked below
        asyncio.run(_ssl_facts(url))
    chain: list[str] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(chain)


# -- the server certificate ----------------------------------------------------------------
def test_server_cert_is_a_server_certificate_from_the_workload_ca(rig: Rig) -> None:
    key = (rig.certs / "server.key").stat()
    assert key.st_mode & 0o777 == 0o600
    chain = x509.load_pem_x509_certificates((rig.certs / "server.crt").read_bytes())
    roots = x509.load_pem_x509_certificates((rig.certs / "ca.crt").read_bytes())
    assert [c.subject for c in roots] == [c.subject for c in rig.svid.bundle]
    leaf = chain[0]
    leaf.verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(roots[0])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not sans.get_values_for_type(x509.UniformResourceIdentifier)  # no SVID
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]  # never a client
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # 30 days, or less where the signing CA ends sooner: never beyond it (the command says so)
    wanted = min(dt.datetime.now(dt.UTC) + dt.timedelta(days=30), chain[1].not_valid_after_utc)
    assert abs(leaf.not_valid_after_utc - wanted) < dt.timedelta(minutes=1)
    private = serialization.load_pem_private_key((rig.certs / "server.key").read_bytes(), None)
    assert private.public_key() == leaf.public_key()
    issued = [
        e for e in events_of(rig.state, "identity") if e["status_detail"] == "server-cert-issued"
    ]
    assert issued, "no event for the certificate"
    trustmesh: Any = issued[0]["unmapped"]["trustmesh"]  # type: ignore[index]
    assert trustmesh["peer_spiffe_id"] == OPERATOR
    assert f"{leaf.serial_number:x}" in json.dumps(issued[0])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "at least one"),
        (("--dns", "*.db.example"), "no wildcard"),
        (("--dns", "Db..example"), "host name"),
        (("--ip", "300.1.2.3"), "not an IP address"),
        (("--ip", "127.0.0.1", "--ip", "127.0.0.1"), "twice"),
        (("--dns", "db", "--ttl", "200d"), "outside"),
        (("--dns", "db", "--ttl", "10m"), "outside"),
    ],
)
def test_server_cert_refuses_bad_requests(rig: Rig, args: tuple[str, ...], says: str) -> None:
    out = rig.certs.parent / "refused"
    made = tm("identity", "server-cert", *args, "--out", str(out), *rig.args)
    assert made.returncode == 2, made.stdout + made.stderr
    assert says in made.stderr
    assert not out.exists()  # nothing written


def test_server_cert_renews_only_when_due_for_the_same_names(rig: Rig) -> None:
    """``--renew-within``: what a daily cron job runs. A certificate for these names that
    outlives the window stays (nothing asked of the service, nothing written); one that
    does not, one for other names, or a missing or unreadable one is renewed."""
    out = rig.certs.parent / "renewing"

    def run(*args: str) -> dict[str, Any]:
        made = tm("identity", "server-cert", "--ip", "127.0.0.1", "--out", str(out),
                  "--json", *args, *rig.args)  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        return dict(json.loads(made.stdout))

    first = run("--ttl", "2h", "--renew-within", "1h")  # missing: made
    assert first["renewed"] is True
    pem = (out / "server.crt").read_bytes()
    kept = run("--renew-within", "90m")  # 2 h left: not due
    assert kept == {"renewed": False, "not_after": first["not_after"], "files": []}
    assert (out / "server.crt").read_bytes() == pem
    due = run("--renew-within", "3h")  # 2 h left: due
    assert due["renewed"] is True
    assert due["serial"] != first["serial"]
    more = tm("identity", "server-cert", "--ip", "127.0.0.1", "--dns", "db.example",
              "--out", str(out), "--renew-within", "1h", *rig.args)  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert "renewed" in more.stdout  # another set of names: renewed whatever the time
    (out / "server.crt").write_text("not a certificate")
    assert run("--renew-within", "1h")["renewed"] is True
    refused = tm("identity", "server-cert", "--ip", "127.0.0.1", "--out", str(out),
                 "--renew-within", "soon", *rig.args)  # fmt: skip
    assert refused.returncode == 2
    assert "--renew-within 'soon'" in refused.stderr


# -- PostgreSQL ------------------------------------------------------------------------------
def test_postgres_verify_full_checks_the_server_and_presents_the_svid(rig: Rig) -> None:
    store_tls.present(FixedSVIDSource(rig.svid))
    for mode in ("verify-full", "verify-ca"):
        is_tls, serial = asyncio.run(_ssl_facts(f"{rig.app_url}?sslmode={mode}"))
        assert is_tls
        assert serial == f"{rig.svid.chain[0].serial_number:x}"  # the server verified it


def test_postgres_verify_full_refuses_a_certificate_for_another_host(rig: Rig) -> None:
    other = rig.certs.parent / "other"
    made = tm("identity", "server-cert", "--dns", "db.invalid", "--out", str(other), *rig.args)
    assert made.returncode == 0, made.stderr
    store_tls.present(FixedSVIDSource(rig.svid))
    rig.cluster.install_certificate(other / "server.crt", other / "server.key")
    rig.cluster.reload()
    try:
        assert "IP address mismatch" in _refused(f"{rig.app_url}?sslmode=verify-full")
        assert asyncio.run(_ssl_facts(f"{rig.app_url}?sslmode=verify-ca"))[0]  # no name check
    finally:
        rig.cluster.install_certificate(rig.certs / "server.crt", rig.certs / "server.key")
        rig.cluster.reload()


def _foreign_svid() -> X509Context:
    """An SVID of the same trust domain from a CA the servers do not know."""
    now = dt.datetime.now(dt.UTC)
    root_key, signing_key = crypto.generate_key(), crypto.generate_key()
    root = crypto.create_root_ca(TD, root_key, now=now, ttl=dt.timedelta(days=1), label="x")
    signing = crypto.create_intermediate_ca(
        TD, signing_key.public_key(), crypto.Issuer(root, root_key),
        now=now, ttl=dt.timedelta(days=1), label="x",
    )  # fmt: skip
    leaf, key = crypto.issue_x509_svid(
        SECRETS, crypto.Issuer(signing, signing_key), now=now, ttl=dt.timedelta(hours=1)
    )
    return X509Context(SECRETS, (leaf, signing), key, (root,))


def test_postgres_refuses_a_server_outside_the_bundle(rig: Rig) -> None:
    store_tls.present(FixedSVIDSource(_foreign_svid()))
    assert "certificate verify failed" in _refused(f"{rig.app_url}?sslmode=verify-full")


def test_postgres_server_refuses_a_client_without_an_svid_of_the_ca(rig: Rig) -> None:
    """The trust is the workload CA's (``sslrootcert``), but the SVID is a stranger's:
    the server, checking client certificates against the CA, refuses it."""
    store_tls.present(FixedSVIDSource(_foreign_svid()))
    url = f"{rig.app_url}?sslmode=verify-full&sslrootcert={rig.certs / 'ca.crt'}"
    log = rig.cluster.folder / "log"
    seen = log.stat().st_size
    _refused(url)  # the client may see the server's alert, or only the closed connection

    def logged() -> bytes:  # the server may write its line after the client has gone
        with log.open("rb") as said:
            said.seek(seen)
            return said.read()

    refused = b"could not accept SSL connection: certificate verify failed"
    until(lambda: refused in logged(), "the server logs its refusal")


def test_verify_full_without_an_svid_is_a_clear_error(rig: Rig) -> None:
    store_tls.present(None)
    with pytest.raises(ConfigError, match="needs the process's SVID"):
        asyncio.run(_ssl_facts(f"{rig.app_url}?sslmode=verify-full"))


def test_verify_full_with_a_key_of_its_own_is_refused(rig: Rig) -> None:
    store_tls.present(FixedSVIDSource(rig.svid))
    with pytest.raises(ConfigError, match="presents its own SVID"):
        create_engine(
            f"{rig.app_url}?sslmode=verify-full&sslcert=/tmp/c.pem&sslkey=/tmp/k.pem",
            tls=store_tls.postgres,
        )


def test_a_store_without_an_identity_refuses_verify_full(rig: Rig) -> None:
    """Fail closed: a store made without the component's TLS never connects with the
    driver's own idea of ``sslmode=verify-full``."""
    store_tls.present(FixedSVIDSource(rig.svid))
    with pytest.raises(ConfigError, match="no identity to verify the server"):
        create_engine(f"{rig.app_url}?sslmode=verify-full")


def _shared(rig: Rig, query: str) -> Any:
    return parse_config(
        source="test",
        text=f"trust_domain: {TD}\ndev: true\nshared:\n"
        f"  postgres: postgresql://tm_owner:{rig.owner_password}@127.0.0.1:{rig.cluster.port}"
        f"/shop?{query}\n  prefix: tlsshop\n",
    )


def test_provisioning_checks_the_server_against_the_workload_ca(rig: Rig) -> None:
    said: list[str] = []
    provision(_shared(rig, "sslmode=verify-full"), rig.state, said.append)
    assert said
    assert "tlsshop_auth" in said[0]


def test_provisioning_before_the_ca_exists_says_what_to_do(rig: Rig, short_tmp: Path) -> None:
    with pytest.raises(ConfigError, match="identity server-cert"):
        provision(_shared(rig, "sslmode=verify-full"), short_tmp / "state", lambda _: None)


# -- Redis -------------------------------------------------------------------------------
async def _redis_round_trip(url: str, *, verified: bool = True, **options: Any) -> str:
    make = store_tls.redis_client if verified else aioredis.from_url
    client = make(url, decode_responses=True, **options)
    try:
        await client.set("tls-probe", "ok")
        return str(await client.get("tls-probe"))
    finally:
        await client.aclose()


def test_rediss_presents_the_svid_and_checks_the_server(rig: Rig) -> None:
    store_tls.present(FixedSVIDSource(rig.svid))
    url = rig.redis.url
    assert url.startswith("rediss://")
    assert asyncio.run(_redis_round_trip(url)) == "ok"
    # the server requires a client certificate: trusting it is not enough
    ca = str(rig.certs / "ca.crt")
    with pytest.raises((OSError, aioredis.RedisError)):
        asyncio.run(_redis_round_trip(url, verified=False, ssl_ca_certs=ca))
    # a server outside the bundle is refused
    store_tls.present(FixedSVIDSource(_foreign_svid()))
    with pytest.raises(aioredis.ConnectionError, match="certificate verify failed"):
        asyncio.run(_redis_round_trip(url))
