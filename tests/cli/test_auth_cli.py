"""``trustmesh auth``: clients and signing keys from the command line, through the running
identity provider's admin API (as the operator). The stack runs as real processes (`up`);
the command runs in this process (``clirig.tm``: a process of its own costs its imports,
most of a second each time), except where it reads a password from stdin
(:func:`tm_stdin`, the installed entry point as a real process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from authrig import code_flow
from clirig import tm
from joserfc.jwk import ECKey

from trustmesh import crypto
from trustmesh.testing import run_cli

CONFIG = """
trust_domain: cli.example
dev: true
services:
  orders: {external: true}
  payments: {external: true}
calls:
  - {from: orders, to: payments, allow: ["POST /charges"]}
"""


@pytest.fixture(scope="module")
def where() -> Iterator[tuple[str, ...]]:
    root = Path(tempfile.mkdtemp(prefix="tma", dir="/tmp"))
    config = root / "trustmesh.yaml"
    config.write_text(CONFIG)
    args = ("--config", str(config), "--state", str(root / "state"))
    up = run_cli("up", *args, "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield args
    finally:
        run_cli("down", "--state", str(root / "state"))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def short_tmp_files(short_tmp: Path) -> Path:
    return short_tmp


REDIRECT = "https://shop.example/cb"


def tm_stdin(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``trustmesh ARGS…`` reading ``stdin``."""
    return subprocess.run(
        [sys.executable, "-m", "trustmesh", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _sign_in(
    where: tuple[str, ...], client_id: str, password: str, secret: str | None = None
) -> dict[str, object]:
    """Code + PKCE on the provider's public listener, as ``erin``; the token response."""
    status = json.loads(tm("status", *where, "--json").stdout)
    public = next(c for c in status["components"] if c["name"] == "auth")["public_url"]
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = str(crypto.edge_ca_path(Path(where[3])))
        return code_flow(
            browser, public, client_id, REDIRECT, "erin", password, client_secret=secret
        )


def test_public_and_web_clients_from_the_command_line_sign_users_in(
    where: tuple[str, ...],
) -> None:
    loopback = "http://127.0.0.1:8765/cb"  # a native app's (RFC 8252 §7.3)
    public = tm(
        "auth", "client", "add", "shop-web", "--method", "none", "--audience", "payments",
        "--redirect-uri", REDIRECT, "--redirect-uri", loopback, *where,
    )  # fmt: skip
    assert public.returncode == 0, public.stdout + public.stderr
    web = tm(
        "auth", "client", "add", "shop-backend", "--method", "client_secret_basic",
        "--audience", "payments", "--redirect-uri", REDIRECT, *where,
    )  # fmt: skip
    assert web.returncode == 0, web.stdout + web.stderr
    secret = web.stdout.strip().splitlines()[-1]
    clients = {
        c["client_id"]: c for c in json.loads(tm("auth", "client", "list", "--json", *where).stdout)
    }
    assert clients["shop-web"]["auth_method"] == "none"
    assert clients["shop-web"]["redirect_uris"] == [REDIRECT, loopback]
    assert clients["shop-backend"]["redirect_uris"] == [REDIRECT]
    password = "erin's long passphrase"
    erin = tm_stdin(password + "\n", "auth", "user", "add", "erin", "--password-stdin", *where)
    assert erin.returncode == 0, erin.stderr
    for client_id, client_secret in (("shop-web", None), ("shop-backend", secret)):
        tokens = _sign_in(where, client_id, password, client_secret)
        claims = jwt.decode(str(tokens["access_token"]), options={"verify_signature": False})
        assert claims["client_id"] == client_id
        assert claims["aud"] == "spiffe://cli.example/payments"
        assert claims["preferred_username"] == "erin"
        assert "id_token" in tokens
        assert "refresh_token" in tokens


def test_without_a_running_provider_the_command_says_so(short_tmp: Path) -> None:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(CONFIG)
    result = tm("auth", "client", "list", "--config", str(config), "--state", str(short_tmp / "s"))
    assert result.returncode == 1
    assert "trustmesh up" in result.stderr


def test_secret_client_is_shown_once_and_stored_hashed(where: tuple[str, ...]) -> None:
    made = tm(
        "auth",
        "client",
        "add",
        "reporting",
        "--method",
        "client_secret_basic",
        "--audience",
        "payments",
        "--scope",
        "charges:read",
        *where,
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert len(secret) >= 40
    listed = tm("auth", "client", "list", "--json", *where)
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    clients = {c["client_id"]: c for c in json.loads(listed.stdout)}
    assert clients["reporting"]["audiences"] == ["spiffe://cli.example/payments"]
    assert clients["reporting"]["scopes"] == ["charges:read"]
    assert clients["orders"]["managed"] is True  # declared services are clients
    assert clients["orders"]["audiences"] == ["spiffe://cli.example/payments"]
    for path in Path(where[3]).rglob("*"):
        if path.is_file() and not path.is_socket():
            assert secret.encode() not in path.read_bytes(), path
    events = (Path(where[3]) / "events" / "auth.jsonl").read_text()
    assert '"client-created"' in events
    assert "trustmesh/operator" in events
    again = tm(
        "auth",
        "client",
        "add",
        "reporting",
        "--method",
        "client_secret_basic",
        "--audience",
        "payments",
        *where,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert tm("auth", "client", "remove", "reporting", *where).returncode == 0
    assert tm("auth", "client", "remove", "reporting", *where).returncode == 2
    assert tm("auth", "client", "remove", "orders", *where).returncode == 2  # declared


def test_private_key_jwt_client_takes_public_keys_only(
    where: tuple[str, ...], short_tmp_files: Path
) -> None:
    short_tmp = short_tmp_files
    key = ECKey.generate_key("P-256", private=True)
    public = short_tmp / "public.jwks"
    public.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    private = short_tmp / "private.jwks"
    private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    refused = tm(
        "auth",
        "client",
        "add",
        "batch",
        "--jwks",
        str(private),
        "--audience",
        "payments",
        *where,
    )
    assert refused.returncode == 2
    assert "private key material" in refused.stderr
    made = tm(
        "auth", "client", "add", "batch", "--jwks", str(public), "--audience", "payments", *where
    )
    assert made.returncode == 0, made.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("bad id!", "--audience", "payments"),
        ("orders", "--audience", "payments"),  # a declared service
        ("x", "--method", "magic", "--audience", "payments"),
        ("x", "--method", "client_secret_basic"),  # no audience
        ("x", "--method", "client_secret_basic", "--audience", "nosuch"),
        ("x", "--method", "client_secret_basic", "--audience", "spiffe://other.example/a"),
        ("x", "--method", "tls_client_auth", "--audience", "payments"),  # no --spiffe-id
        ("x", "--method", "client_secret_basic", "--audience", "payments", "--scope", "a b"),
        ("x", "--method", "client_secret_post", "--audience", "payments"),  # not registrable
    ],
)
def test_bad_client_definitions_exit_2_and_change_nothing(
    where: tuple[str, ...], args: tuple[str, ...]
) -> None:
    result = tm("auth", "client", "add", *args, *where)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip()
    listed = json.loads(tm("auth", "client", "list", "--json", *where).stdout)
    assert "x" not in {c["client_id"] for c in listed}
    assert "bad id!" not in {c["client_id"] for c in listed}


@pytest.mark.parametrize(
    ("uris", "says"),
    [
        ((), "needs at least one redirect URI"),
        (("http://shop.example/cb",), "https, or http on a loopback address"),
        (("https://shop.example/cb#top",), "no fragment"),
        (("https://user@shop.example/cb",), "no userinfo"),
        (("https://shop.example:99999/cb",), "not a valid URL"),
        (("/cb",), "https, or http on a loopback address"),
        ((REDIRECT, "ftp://shop.example/cb"), "https, or http on a loopback address"),
    ],
)
def test_bad_redirect_uris_exit_2_say_why_and_change_nothing(
    where: tuple[str, ...], uris: tuple[str, ...], says: str
) -> None:
    options = [a for u in uris for a in ("--redirect-uri", u)]
    result = tm(
        "auth", "client", "add", "x", "--method", "none", "--audience", "payments", *options,
        *where,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr
    listed = json.loads(tm("auth", "client", "list", "--json", *where).stdout)
    assert "x" not in {c["client_id"] for c in listed}


def test_rotate_keys_publishes_the_next_key_before_it_signs(where: tuple[str, ...]) -> None:
    before = json.loads(tm("auth", "keys", "--json", *where).stdout)
    assert [k["status"] for k in before] == ["active"]
    first = tm("auth", "rotate-keys", "--json", *where)
    assert first.returncode == 0, first.stderr
    keys = json.loads(first.stdout)
    assert sorted(k["status"] for k in keys) == ["active", "published"]
    again = json.loads(tm("auth", "rotate-keys", "--json", *where).stdout)
    assert len(again) == 2  # one pending key at a time
    listed = json.loads(tm("auth", "keys", "--json", *where).stdout)
    assert [k["kid"] for k in listed] == [k["kid"] for k in keys]


def test_users_from_the_command_line(where: tuple[str, ...]) -> None:
    made = tm("auth", "user", "add", "alice", *where)
    assert made.returncode == 0, made.stderr
    password = made.stdout.strip().splitlines()[-1]
    assert len(password) >= 40
    admin = tm("auth", "user", "add", "root-admin", "--role", "admin", *where)
    assert admin.returncode == 0, admin.stderr
    assert admin.stdout.strip().splitlines()[-1].startswith("otpauth://totp/")
    chosen = tm_stdin(
        "a chosen passphrase here\n", "auth", "user", "add", "carol", "--password-stdin", *where
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "a chosen passphrase" not in chosen.stdout
    listed = {
        u["username"]: u for u in json.loads(tm("auth", "user", "list", "--json", *where).stdout)
    }
    assert listed["root-admin"]["mfa"] is True
    assert listed["alice"]["mfa"] is False
    assert tm("auth", "user", "lock", "alice", *where).returncode == 0
    after = {
        u["username"]: u for u in json.loads(tm("auth", "user", "list", "--json", *where).stdout)
    }
    assert after["alice"]["locked"] is True
    reset = tm("auth", "user", "reset-mfa", "alice", *where)
    assert reset.returncode == 0
    assert reset.stdout.strip().splitlines()[-1].startswith("otpauth://totp/")
    assert tm("auth", "user", "lock", "nobody", *where).returncode == 2
    short = tm_stdin("short\n", "auth", "user", "add", "dan", "--password-stdin", *where)
    assert short.returncode == 2
    assert "12 characters" in short.stderr
    # a new password: generated and shown once, or read from stdin; never echoed
    changed = tm("auth", "user", "set-password", "alice", *where)
    assert changed.returncode == 0, changed.stderr
    generated = changed.stdout.strip().splitlines()[-1]
    assert len(generated) >= 40
    assert generated != password
    set_password = ("auth", "user", "set-password", "carol", "--password-stdin", *where)
    chosen_again = tm(*set_password, stdin="another chosen passphrase\n")
    assert chosen_again.returncode == 0, chosen_again.stderr
    assert "another chosen" not in chosen_again.stdout
    too_short = tm(*set_password, stdin="short\n")
    assert too_short.returncode == 2
    assert tm("auth", "user", "set-password", "nobody", *where).returncode == 2
    for path in Path(where[3]).rglob("*"):
        if path.is_file() and not path.is_socket():
            assert password.encode() not in path.read_bytes(), path
            assert generated.encode() not in path.read_bytes(), path
