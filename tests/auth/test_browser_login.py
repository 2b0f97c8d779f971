"""A real browser (headless Chromium driven through ChromeDriver) logs in to the shop:
authorization code + PKCE against the identity provider's public listener, the login
form filled in and submitted, the redirect back to a relying party that exchanges the
code, verifies the ID token and asks userinfo who signed in.

Chromium trusts exactly the two dev certificates in play (``--ignore-certificate-errors-
spki-list``), not every certificate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authrig import AuthRig
from browserrig import browser_binaries, spki_pin, start_chrome
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from trustmesh import crypto
from trustmesh.platform.listeners import start_public

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    return browser_binaries()


@pytest.fixture
def chrome(binaries: tuple[str, str]) -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="tm-chrome-")
    made: list[Any] = []

    def start(pins: list[str]) -> Any:
        driver = start_chrome(binaries, profile, pins)
        made.append(driver)
        return driver

    try:
        yield start
    finally:
        for driver in made:
            with contextlib.suppress(Exception):  # quit already, as a rule
                driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def _leaf(url: str, ca: str) -> x509.Certificate:
    parts = urlsplit(url)
    assert parts.hostname is not None
    context = ssl.create_default_context(cafile=ca)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def _operator_post(rig: AuthRig, path: str, body: Any) -> dict[str, Any]:
    with rig.operator.mount(requests.Session()) as s:
        r = s.post(rig.url + path, json=body, timeout=30)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_a_browser_logs_in_with_code_and_pkce(rig: AuthRig, chrome: Any) -> None:
    ca = str(crypto.edge_ca_path(rig.state))
    alice = await asyncio.to_thread(
        _operator_post, rig, "/admin/v1/users", {"username": "alice", "password": PASSWORD}
    )
    # the relying party: a small web app with its own dev certificate
    rp_cert = crypto.local_server_certificate(rig.state, rig.auth.service.seal_key)
    seen: dict[str, Any] = {}
    session = OAuth2Session(
        client_id="shop-web",
        scope="openid",
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
    )
    session.trust_env = False
    session.verify = ca
    verifier, nonce = generate_token(48), generate_token(16)

    def exchange(url: str) -> dict[str, Any]:
        tokens: dict[str, Any] = session.fetch_token(
            rig.public_url + "/oauth2/token", authorization_response=url, code_verifier=verifier
        )
        info = requests.get(
            rig.public_url + "/oauth2/userinfo",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            verify=ca,
            timeout=30,
        )
        tokens["userinfo"] = info.json()
        return tokens

    async def callback(request: Request) -> HTMLResponse:
        tokens = await asyncio.to_thread(exchange, str(request.url))
        seen["tokens"] = tokens
        who = tokens["userinfo"].get("preferred_username", "?")
        return HTMLResponse(f"<html><body><p id='who'>Signed in as {who}</p></body></html>")

    rp = await start_public(
        Starlette(routes=[Route("/cb", callback)]),
        chain_pem=rp_cert.chain_pem(),
        key_pem=rp_cert.key_pem(),
    )
    try:
        redirect = f"https://127.0.0.1:{rp.port}/cb"
        session.redirect_uri = redirect
        await asyncio.to_thread(
            _operator_post,
            rig,
            "/admin/v1/clients",
            {
                "client_id": "shop-web",
                "method": "none",
                "redirect_uris": [redirect],
                "audiences": ["orders"],
            },
        )
        start, _ = session.create_authorization_url(
            rig.public_url + "/oauth2/authorize", code_verifier=verifier, nonce=nonce
        )
        pins = [spki_pin(await _leaf(rig.public_url, ca)), spki_pin(rp_cert.chain[0])]
        driver = chrome(pins)
        try:
            signed_in = await asyncio.to_thread(_drive, driver, start, "alice", PASSWORD)
        finally:  # the browser's connections close before the servers stop
            await asyncio.to_thread(driver.quit)
    finally:
        session.close()  # no keep-alive connection outlives the test's servers
        await rp.stop()
    assert signed_in == "Signed in as alice"
    tokens = seen["tokens"]
    assert tokens["userinfo"] == {"sub": alice["user_id"], "preferred_username": "alice"}
    jwks = jwt.PyJWKClient(
        rig.public_url + "/jwks.json", ssl_context=ssl.create_default_context(cafile=ca)
    )
    key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, tokens["id_token"])
    claims = jwt.decode(
        tokens["id_token"], key.key, algorithms=["ES256"], audience="shop-web", issuer=rig.issuer
    )
    assert claims["sub"] == alice["user_id"]
    assert claims["nonce"] == nonce


def _drive(driver: Any, start: str, username: str, password: str) -> str:
    """In the browser: open the authorization URL, fill in the login form, submit, and
    return what the relying party's page says."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(start)
    wait = WebDriverWait(driver, 30)
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "username")))
    assert "/login" in driver.current_url
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = driver.find_elements(By.ID, "who")
        if found:
            return str(found[0].text)
        time.sleep(0.1)
    raise AssertionError(
        f"the browser did not reach the relying party: {driver.current_url}\n"
        + driver.page_source[:2000]
        + f"\n{os.linesep.join(str(e) for e in driver.get_log('browser'))}"
    )


async def test_a_browser_signs_in_to_the_account_page_and_out(rig: AuthRig, chrome: Any) -> None:
    """The provider's own small page: the login form, back to the account page, and a
    sign-out that ends the session (the demo's "try it in a browser")."""
    ca = str(crypto.edge_ca_path(rig.state))
    await asyncio.to_thread(
        _operator_post, rig, "/admin/v1/users", {"username": "shopper", "password": PASSWORD}
    )
    driver = chrome([spki_pin(await _leaf(rig.public_url, ca))])
    try:
        after = await asyncio.to_thread(_account_round_trip, driver, rig.public_url)
    finally:
        await asyncio.to_thread(driver.quit)
    assert after == ("Signed in as shopper", True)
    reasons = [e.reason for e in rig.sink.events]
    assert "login-succeeded" in reasons
    assert "logout" in reasons


def _account_round_trip(driver: Any, base: str) -> tuple[str, bool]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    driver.get(base + "/account")
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "username")))
    driver.find_element(By.NAME, "username").send_keys("shopper")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    who = wait.until(expected_conditions.presence_of_element_located((By.ID, "who"))).text
    driver.find_element(By.CSS_SELECTOR, "form button").click()  # sign out
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "username")))
    signed_out = "/login" in driver.current_url
    return str(who), signed_out
