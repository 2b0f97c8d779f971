"""The console of a running `trustmesh up` (the packaged demo), driven in a real browser:
Debian's Chromium through ChromeDriver (never a downloaded browser).

An admin signs in at the identity provider with a password and a TOTP code; every page
renders with the stack's data; the call graph's counts and the events and alerts lists
update without a reload; a customer is refused; no page can be framed; a request path,
a login name and a posture report holding markup show as text and run nothing.
Screenshots go to ``artifacts/console/`` (``TRUSTMESH_ARTIFACTS`` moves it)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from browserrig import browser_binaries, spki_pin, start_chrome
from cryptography import x509
from demorig import demo_copy, demo_credentials

from trustmesh import crypto
from trustmesh.cli.supervisor import RunPaths, read_json
from trustmesh.testing import run_cli as tm
from trustmesh.testing import until

ARTIFACTS = Path(os.environ.get("TRUSTMESH_ARTIFACTS", "artifacts")) / "console"
XSS = "<script>window.__tm_xss=1</script><img src=x onerror=window.__tm_xss=2>"

pytestmark = pytest.mark.xdist_group("console")


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    config = demo_copy("tmc")
    root = config.parent
    state = root / "state"
    up = tm("up", "--config", str(config), "--state", str(state), "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(
            tm("status", "--config", str(config), "--state", str(state), "--json").stdout
        )
        rows = {c["name"]: c for c in status["components"]}
        yield {
            "state": state,
            "status": status,
            "rows": rows,
            "console": rows["console"]["url"],
            "ca": str(state / "edge" / "ca.pem"),
            "credentials": demo_credentials(up.stdout),
        }
    finally:
        tm("down", "--state", str(state))
        shutil.rmtree(root, ignore_errors=True)


#: The TOTP period each secret's last code was of (the provider takes each code once).
_USED: dict[str, int] = {}


def _totp(secret: str) -> str:
    """A fresh code: the current period's, or, if this secret's code of that period was
    used already, the next period's once it has begun."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    period = int(time.time() // 30)
    if _USED.get(secret) == period:
        time.sleep((period + 1) * 30 - time.time() + 0.5)
        period += 1
    _USED[secret] = period
    return crypto.totp_code(key, time.time())


def _pin(url: str, ca: str) -> str:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return spki_pin(x509.load_der_x509_certificate(der))


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    return browser_binaries()


@pytest.fixture
def chrome(binaries: tuple[str, str], stack: dict[str, Any]) -> Iterator[Any]:
    """A headless Chromium that trusts exactly the console's and the provider's
    certificates, its console and CSP messages kept."""
    profile = tempfile.mkdtemp(prefix="tm-chrome-")
    pins = [
        _pin(stack["console"], stack["ca"]),
        _pin(stack["rows"]["auth"]["public_url"], stack["ca"]),
    ]
    driver = start_chrome(binaries, profile, pins, "--window-size=1400,1000", logs=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _sign_in(driver: Any, stack: dict[str, Any], username: str) -> None:
    """Start at the console, sign in at the provider (with a TOTP code if the user has
    one), and come back."""
    from selenium.webdriver.common.by import By

    password, secret = stack["credentials"][username]
    driver.get(stack["console"] + "/signin")
    driver.find_element(By.ID, "signin").click()
    until(lambda: driver.find_elements(By.NAME, "username"), "the provider's login form", within=30)
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    if secret:
        driver.find_element(By.NAME, "otp").send_keys(_totp(secret))
    driver.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
    until(lambda: driver.current_url.startswith(stack["console"]), "the way back", within=30)


def _gateway_get(stack: dict[str, Any], path: str) -> tuple[int, str]:
    """A request to the gateway's public listener, the path sent as is."""
    gateway = stack["rows"]["gateway"]
    parts = urlsplit(gateway.get("public_url") or gateway["url"])
    context = ssl.create_default_context(cafile=stack["ca"])
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=context, timeout=10
    )
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.getheader("traceresponse") or ""
    finally:
        connection.close()


def _logged(stack: dict[str, Any], component: str) -> list[dict[str, Any]]:
    path = Path(stack["state"]) / "events" / f"{component}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.__tm_xss === undefined") is True


def test_status_names_the_console_with_its_url(stack: dict[str, Any]) -> None:
    row = stack["rows"]["console"]
    assert row["healthy"] is True
    assert row["url"].startswith("https://127.0.0.1:")
    assert row["cert_kind"] == "web"


def test_every_answer_forbids_framing_and_inline_script(stack: dict[str, Any]) -> None:
    for path in ("/signin", "/services", "/api/graph", "/static/console.js", "/nothing"):
        answer = requests.get(
            stack["console"] + path, verify=stack["ca"], allow_redirects=False, timeout=10
        )
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp, path
        assert "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp, path
        assert answer.headers["x-frame-options"] == "DENY", path
        assert answer.headers["x-content-type-options"] == "nosniff", path
    # no session: pages send to the sign-in, feeds refuse
    page = requests.get(
        stack["console"] + "/events", verify=stack["ca"], allow_redirects=False, timeout=10
    )
    assert (page.status_code, page.headers["location"]) == (303, "/signin")
    feed = requests.get(stack["console"] + "/api/events?after=0", verify=stack["ca"], timeout=10)
    assert feed.status_code == 401


def test_a_customer_is_refused(stack: dict[str, Any], chrome: Any) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(chrome, stack, "shopper")
    shown = until(lambda: chrome.find_elements(By.ID, "message"), "the refusal", within=30)
    message = shown[0].text
    _shot(chrome, "refused-customer")
    assert "Only admins" in message
    chrome.get(stack["console"] + "/services")
    assert urlsplit(chrome.current_url).path == "/signin"  # no session was made
    logged = (Path(stack["state"]) / "events" / "audit.jsonl").read_text()
    assert "the console is for admins only" in logged


def test_an_admin_sees_every_page_live(stack: dict[str, Any], chrome: Any) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(chrome, stack, "admin")
    assert urlsplit(chrome.current_url).path == "/services"
    assert chrome.find_element(By.ID, "who").text == "admin"
    rows = {
        r.get_attribute("data-name"): r.text
        for r in chrome.find_elements(By.CSS_SELECTOR, "#services tbody tr")
    }
    for name in (
        "identity",
        "audit",
        "auth",
        "secrets",
        "gateway",
        "orders",
        "payments",
        "inventory",
    ):
        assert "healthy" in rows[name], (name, rows)
    assert "spiffe://trustmesh.local/orders" in rows["orders"]
    _shot(chrome, "services")

    # the call graph: a refusal at the gateway shows on its edge without a reload
    chrome.get(stack["console"] + "/graph")
    edge = "#graph [data-edge='clients->gateway'] [data-count=deny]"
    before = int(chrome.find_element(By.CSS_SELECTOR, edge).text)
    for _ in range(3):
        assert _gateway_get(stack, "/orders")[0] == 401
    until(
        lambda: int(chrome.find_element(By.CSS_SELECTOR, edge).text) >= before + 3,
        "live counts",
        within=30,
    )
    assert chrome.find_element(By.CSS_SELECTOR, "#graph [data-edge='orders->payments']")
    _shot(chrome, "graph")

    # live events, filtered to refusals; a path holding markup shows as text
    chrome.get(stack["console"] + "/events?decision=deny")
    status, traceresponse = _gateway_get(stack, "/items/" + XSS.replace(" ", "%20"))
    assert status == 400
    cell = until(
        lambda: [
            c for c in chrome.find_elements(By.CSS_SELECTOR, "#events td") if "__tm_xss" in c.text
        ],
        "the new event, live",
        within=30,
    )[0]
    assert "<script>" in cell.text
    _no_script_ran(chrome)
    _shot(chrome, "events")

    # the next page holds older events only
    for _ in range(50):  # more than a page, with what the stack's start recorded
        _gateway_get(stack, "/orders")

    def first_page() -> list[int]:
        chrome.get(stack["console"] + "/events")
        rows = chrome.find_elements(By.CSS_SELECTOR, "#events tbody tr")
        return [int(r.get_attribute("data-seq")) for r in rows]

    first = until(
        lambda: (seqs := first_page()) and len(seqs) == 100 and seqs, "a full page", within=30
    )
    chrome.find_element(By.ID, "older").click()
    until(lambda: "before=" in chrome.current_url, "the older page", within=30)
    older = [
        int(r.get_attribute("data-seq"))
        for r in chrome.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    ]
    assert older
    assert max(older) < min(first)
    assert older == sorted(older, reverse=True)

    # the trace of that request, from the link in its row
    trace_id = traceresponse.split("-")[1]
    chrome.get(stack["console"] + f"/traces/{trace_id}")
    until(
        lambda: chrome.find_elements(By.CSS_SELECTOR, "#spans tbody tr"),
        "the trace's spans",
        within=30,
    )
    assert "gateway" in chrome.find_element(By.ID, "spans").text
    assert "path-non-canonical" in chrome.find_element(By.ID, "events").text
    _shot(chrome, "trace")
    looked = until(
        lambda: [
            e
            for e in _logged(stack, "audit")
            if e["unmapped"]["trustmesh"]["reason"] == "admin-read"
            and e["unmapped"]["trustmesh"]["attributes"]["action"] == "console-trace"
        ],
        "the record of the admin's look at the trace",
        within=30,
    )
    assert looked[0]["unmapped"]["trustmesh"]["attributes"]["by"] == "user:admin"

    # alerts, live: ten failed logins for one (markup-named) account within a minute
    chrome.get(stack["console"] + "/alerts")
    _fail_logins(stack, XSS, 10)
    row = until(
        lambda: [
            r
            for r in chrome.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")
            if "Brute-force" in r.text
        ],
        "the alert, live",
        within=60,
    )[0]
    assert "<script>" in row.text
    _no_script_ran(chrome)
    _shot(chrome, "alerts")
    row.find_element(By.CSS_SELECTOR, "a").click()
    until(
        lambda: chrome.find_elements(By.CSS_SELECTOR, "#events tbody tr"),
        "the alert's events",
        within=30,
    )
    assert "login-failed" in chrome.find_element(By.ID, "events").text
    _no_script_ran(chrome)
    _shot(chrome, "alert")

    # the posture: none yet; then an attack run's report (markup in it stays text)
    chrome.get(stack["console"] + "/posture")
    assert chrome.find_element(By.ID, "no-run")
    report = {
        "controls": [
            {
                "name": XSS,
                "passed": False,
                "attack": "forged token",
                "observed": "401",
                "event_ids": [],
            }
        ]
    }
    (Path(stack["state"]) / "attack").mkdir(exist_ok=True)
    (Path(stack["state"]) / "attack" / "latest.json").write_text(json.dumps(report))
    chrome.refresh()
    assert "FAILED" in chrome.find_element(By.ID, "controls").text
    assert "<script>" in chrome.find_element(By.ID, "controls").text
    _no_script_ran(chrome)
    _shot(chrome, "posture")

    # no page can be framed, even by a page of its own machine
    framing = _framing_page(stack["console"] + "/services")
    try:
        chrome.get(framing)
        until(
            lambda: [e for e in chrome.get_log("browser") if "frame-ancestors" in e["message"]],
            "the browser's refusal to frame the console",
            within=30,
        )
    finally:
        _stop_framing_page()

    # signing out ends the session (the form carries its CSRF token)
    chrome.get(stack["console"] + "/services")
    chrome.find_element(By.CSS_SELECTOR, "form.signout button").click()
    until(
        lambda: urlsplit(chrome.current_url).path == "/signin",
        f"the sign-out (at {chrome.current_url})",
        within=30,
    )
    chrome.get(stack["console"] + "/events")
    assert urlsplit(chrome.current_url).path == "/signin"


def test_a_restarted_collector_signs_no_admin_out(stack: dict[str, Any], chrome: Any) -> None:
    """The collector stopped and started again by the supervisor: the admin's session
    holds. Asked with the session's cookie by a client that trusts the dev edge CA (in
    dev mode the console's certificate is made anew at each start; this browser pins
    the first)."""
    _sign_in(chrome, stack, "admin")
    cookie = chrome.get_cookie("__Host-tm-console")["value"]
    run = RunPaths(Path(stack["state"])).component("audit")
    pid = (read_json(run) or {}).get("pid")
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGTERM)
    until(
        lambda: (read_json(run) or {}).get("pid") not in (None, pid) and _answers(stack["console"]),
        "the collector started again",
        within=60,
    )
    page = requests.get(
        stack["console"] + "/services",
        cookies={"__Host-tm-console": cookie},
        verify=stack["ca"],
        allow_redirects=False,
        timeout=10,
    )
    assert page.status_code == 200
    assert re.search(r'id="who"[^>]*>\s*admin\s*<', page.text), page.text[:500]


def _answers(url: str) -> bool:
    """Whether ``url``'s listener takes a connection."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return False
    return True


def test_sign_out_without_the_session_csrf_token_is_refused(stack: dict[str, Any]) -> None:
    answer = requests.post(
        stack["console"] + "/auth/signout",
        data={"csrf": "guess"},
        cookies={"__Host-tm-console": "made-up"},
        verify=stack["ca"],
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 403


def _fail_logins(stack: dict[str, Any], username: str, times: int) -> None:
    public = stack["rows"]["auth"]["public_url"]
    with requests.Session() as browser:
        browser.verify = stack["ca"]
        browser.trust_env = False
        for _ in range(times):
            form = browser.get(public + "/login", timeout=10).text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            assert csrf is not None
            browser.post(
                public + "/login",
                data={
                    "csrf": csrf[1],
                    "next": "/account",
                    "username": username,
                    "password": "wrong guess",
                },
                timeout=10,
            )


_framing: list[ThreadingHTTPServer] = []


def _framing_page(target: str) -> str:
    """A page on another loopback port that puts ``target`` in an iframe."""
    body = f'<html><body><iframe src="{target}" width="600" height="400"></iframe></body></html>'.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _framing.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}/"


def _stop_framing_page() -> None:
    while _framing:
        server = _framing.pop()
        server.shutdown()
        server.server_close()
