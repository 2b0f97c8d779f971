"""Tests that need Redis or PostgreSQL: skip where unreachable, fail in CI; and a private
PostgreSQL cluster for a test that must stop, break or reconfigure one."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

REQUIRE_SERVICES = os.environ.get("TRUSTMESH_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip where a service is unreachable (a laptop); fail in CI, which must have it."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
    pytest.skip(message)


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.asynccontextmanager
async def postgres_database(prefix: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards (close every
    engine on it first); its SQLAlchemy URL."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of a test's own (``initdb`` + ``pg_ctl``) in ``folder``, on
    a free port of 127.0.0.1 — never the machine's own. ``ADMIN`` (a superuser) connects
    over the unix socket in ``folder`` with trust; over TCP every role gives its password
    (SCRAM), so a wrong one is refused. Run as ``nobody`` when the tests run as root
    (PostgreSQL refuses root)."""

    ADMIN: ClassVar[str] = "tmadmin"
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *argv: str) -> None:
        if os.geteuid() == 0:
            who = pwd.getpwnam("nobody")
            argv = (
                "setpriv",
                f"--reuid={who.pw_uid}",
                f"--regid={who.pw_gid}",
                "--clear-groups",
                *argv,
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        subprocess.run(argv, check=True, capture_output=True, timeout=60, env=env)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -h 127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def install_certificate(self, cert: Path, key: Path, ca: Path | None = None) -> None:
        """Copy a server certificate and key (and the clients' CA) into the cluster, as
        PostgreSQL demands them (its owner's, the key 0600); a running cluster takes them
        at its next :meth:`reload`."""
        files = [(cert, "server.crt", 0o644), (key, "server.key", 0o600)]
        files += [(ca, "ca.crt", 0o644)] if ca is not None else []
        for source, name, mode in files:
            target = self.data / name
            shutil.copyfile(source, target)
            target.chmod(mode)
            if os.geteuid() == 0:
                who = pwd.getpwnam("nobody")
                os.chown(target, who.pw_uid, who.pw_gid)

    def reload(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "reload")

    async def owned_database(self, name: str) -> str:
        """A new database ``name`` owned by a role of the same name with a password of
        its own (SCRAM over TCP, as a deployment connects); its SQLAlchemy URL."""
        import secrets

        password = secrets.token_urlsafe(24)
        admin = await self.admin()
        try:
            await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            await admin.execute(f"CREATE DATABASE {name} OWNER {name}")
        finally:
            await admin.close()
        return f"postgresql+asyncpg://{name}:{password}@127.0.0.1:{self.port}/{name}"

    async def admin(self, database: str = "postgres") -> Any:
        """An asyncpg connection as the superuser, over the unix socket."""
        import asyncpg

        return await asyncpg.connect(
            host=str(self.folder), port=self.port, user=self.ADMIN, database=database
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerTLS:
    """What a private server presents and checks: its certificate chain and key (PEM
    files), and the CA bundle its clients' certificates must chain to."""

    cert: Path
    key: Path
    ca: Path


#: With TLS, the cluster's pg_hba: TLS only over TCP, and a client certificate from the
#: CA as well as the password — except for roles named in ``password_only``.
_HBA_TLS = (
    "local all all trust\n{exempt}hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n"
)


@contextlib.contextmanager
def private_postgres(
    tls: ServerTLS | None = None, password_only: tuple[str, ...] = ()
) -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, stopped and removed afterwards. Skips where
    ``initdb`` is not installed (fails with TRUSTMESH_REQUIRE_SERVICES=1). With ``tls``
    it accepts TCP connections over TLS only, each with a client certificate that chains
    to ``tls.ca`` (but the roles in ``password_only``: a password over TLS)."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        message = "initdb and pg_ctl (PostgreSQL's server) are not on PATH"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="tmpg", dir="/tmp"))
    if os.geteuid() == 0:
        who = pwd.getpwnam("nobody")
        os.chown(folder, who.pw_uid, who.pw_gid)
    cluster = PrivatePostgres(folder, _free_port())
    try:
        cluster._run(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            cluster.ADMIN,
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        if tls is not None:
            _server_tls(cluster, tls, password_only)
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _server_tls(cluster: PrivatePostgres, tls: ServerTLS, password_only: tuple[str, ...]) -> None:
    """Copy the certificate, key and CA into the cluster (its owner's, the key 0600, as
    PostgreSQL demands), turn TLS on, and write pg_hba.conf (:data:`_HBA_TLS`)."""
    cluster.install_certificate(tls.cert, tls.key, tls.ca)
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        conf.write("ssl_ca_file = 'ca.crt'\n")
    exempt = "".join(f"hostssl all {role} 127.0.0.1/32 scram-sha-256\n" for role in password_only)
    (cluster.data / "pg_hba.conf").write_text(_HBA_TLS.format(exempt=exempt))


def require_crs() -> Path:
    """The OWASP Core Rule Set's rules directory (Debian's modsecurity-crs, which
    ``.ci/run`` installs): skip where it is missing, fail in CI."""
    from trustmesh.gateway.crs import DEFAULT_RULES

    if any(DEFAULT_RULES.glob("REQUEST-9*.conf")):
        return DEFAULT_RULES
    message = f"the OWASP Core Rule Set is not in {DEFAULT_RULES} (apt-get install modsecurity-crs)"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
    pytest.skip(message)
