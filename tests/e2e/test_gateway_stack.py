"""The gateway under `trustmesh up`: started after the provider and before the services,
which then trust its internal tokens; a user who signed in on the provider's public
listener reaches a service through it, and without a token gets nothing."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from secretscan import UsedSecrets, assert_no_secret_recorded

from trustmesh.cli.auth_cmd import admin_call
from trustmesh.config import load_config
from trustmesh.testing import run_cli as tm

CONFIG = """trust_domain: gw.example
dev: true
services:
  inventory: {run: "trustmesh.demo.inventory:app"}
gateway:
  routes:
    - {path: /items, to: inventory, methods: [GET]}
"""
REDIRECT = "https://shop.example/cb"
PASSWORD = "a shopper's long passphrase"


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    config = root / "trustmesh.yaml"
    config.write_text(CONFIG)
    state = root / "state"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    used = UsedSecrets()
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(
            tm("status", "--config", str(config), "--state", str(state), "--json").stdout
        )
        yield {"config": config, "state": state, "status": status, "used": used}
        assert tm("down", "--state", str(state)).returncode == 0
        assert_no_secret_recorded(state, used, at_least=0)
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


def _component(stack: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in stack["status"]["components"] if c["name"] == name)


def test_the_gateway_runs_healthy_with_its_own_identity(stack: dict[str, Any]) -> None:
    gateway = _component(stack, "gateway")
    assert gateway["healthy"] is True
    assert gateway["spiffe_id"] == "spiffe://gw.example/trustmesh/gateway"
    assert gateway["url"].startswith("https://127.0.0.1:")
    assert gateway["cert_expires"]
    names = [c["name"] for c in stack["status"]["components"]]
    assert names.index("gateway") < names.index("inventory")


def test_a_signed_in_user_reaches_a_service_through_the_gateway(stack: dict[str, Any]) -> None:
    config = load_config(stack["config"])
    state, used = stack["state"], stack["used"]
    ca = str(state / "edge" / "ca.pem")
    admin_call(config, state, "POST", "/admin/v1/users", {"username": "sam", "password": PASSWORD})
    admin_call(
        config,
        state,
        "POST",
        "/admin/v1/clients",
        {
            "client_id": "shop-web",
            "method": "none",
            "redirect_uris": [REDIRECT],
            "audiences": ["spiffe://gw.example/trustmesh/gateway"],
        },
    )
    public = _component(stack, "auth")["public_url"]
    gateway = _component(stack, "gateway")["url"]
    with requests.Session() as browser:
        browser.trust_env = False
        browser.verify = ca
        client = OAuth2Session(
            client_id="shop-web",
            redirect_uri=REDIRECT,
            scope="openid",
            token_endpoint_auth_method="none",
            code_challenge_method="S256",
        )
        verifier = generate_token(48)
        url, _ = client.create_authorization_url(
            public + "/oauth2/authorize", code_verifier=verifier
        )
        login = browser.get(url, allow_redirects=False, timeout=30)
        form = browser.get(public + login.headers["Location"], timeout=30)
        fields = dict(
            (m.split('name="')[1].split('"')[0], m.split('value="')[1].split('"')[0])
            for m in form.text.split("<input")
            if 'type="hidden"' in m
        )
        signed_in = browser.post(
            public + "/login",
            data={
                **fields,
                "next": fields["next"].replace("&amp;", "&"),
                "username": "sam",
                "password": PASSWORD,
                "otp": "",
            },
            allow_redirects=False,
            timeout=30,
        )
        assert signed_in.status_code == 303, signed_in.text
        back = browser.get(
            public + signed_in.headers["Location"], allow_redirects=False, timeout=30
        )
        code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
        used.add(PASSWORD, code, verifier)
        tokens = browser.post(
            public + "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": "shop-web",
                "code_verifier": verifier,
            },
            timeout=30,
        ).json()
        used.tokens(tokens)
        through = browser.get(
            gateway + "/items/tea",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            timeout=30,
        )
        assert through.status_code == 200, through.text
        assert through.json()["item"] == "tea"
        refused = browser.get(gateway + "/items/tea", timeout=30)
        assert refused.status_code == 401
    events = (state / "events" / "gateway.jsonl").read_text().splitlines()
    reasons = [json.loads(line)["status_detail"] for line in events]
    assert "request-forwarded" in reasons
    assert "token-missing" in reasons


def test_trustmesh_gateway_reload_applies_a_changed_declaration(stack: dict[str, Any]) -> None:
    """The CLI signals the running gateway, which reads the declaration again: a route
    added is served at once; a declaration that does not compile is refused with why, and
    the running one stays."""
    config, state = stack["config"], stack["state"]
    ca = str(state / "edge" / "ca.pem")
    gateway = _component(stack, "gateway")["url"]
    original = config.read_text()
    with requests.Session() as browser:
        browser.trust_env = False
        assert browser.get(gateway + "/stock/tea", verify=ca, timeout=30).status_code == 404
        config.write_text(
            original + "    - {path: /stock, to: inventory, methods: [GET], auth: [anonymous], "
            "paths: ['/stock/{item}'], waf: {action: log}}\n"
        )
        reloaded = tm("gateway", "reload", "--state", str(state))
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "applied" in reloaded.stdout
        # routed now: the service answers (its own call policy, read when it started,
        # does not know the new operation: defence in depth), not the gateway's 404
        answer = browser.get(gateway + "/stock/tea", verify=ca, timeout=30)
        assert answer.json()["message"].startswith("the service"), answer.text
        config.write_text(original.replace("routes:", "routes:\n    - {path: /x, to: nowhere}"))
        refused = tm("gateway", "reload", "--state", str(state))
        assert refused.returncode == 1
        assert "reload refused" in refused.stderr
        still = browser.get(gateway + "/stock/tea", verify=ca, timeout=30)
        assert still.json()["message"] == answer.json()["message"]
    config.write_text(original)
