"""Debian's Chromium driven through ChromeDriver (never a downloaded browser), trusting
exactly the certificates a test names by their SPKI pins — not every certificate."""

from __future__ import annotations

import base64
import hashlib
import shutil
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from services import REQUIRE_SERVICES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def browser_binaries() -> tuple[str, str]:
    """Chromium's and ChromeDriver's paths; the test skips where they are missing (and
    fails when TRUSTMESH_REQUIRE_SERVICES=1)."""
    if CHROMIUM and CHROMEDRIVER:
        return CHROMIUM, CHROMEDRIVER
    message = (
        "Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver)"
    )
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and TRUSTMESH_REQUIRE_SERVICES=1")
    pytest.skip(message)


def spki_pin(cert: x509.Certificate) -> str:
    """Chromium's pin of a certificate: base64 of the SHA-256 of its public key."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def start_chrome(
    binaries: tuple[str, str], profile: str, pins: list[str], *extra: str, logs: bool = False
) -> Any:
    """A headless Chromium in ``profile`` trusting the certificates ``pins`` name;
    ``logs``: its console and CSP messages kept for ``get_log("browser")``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={','.join(pins)}",
        *extra,
    ):
        options.add_argument(arg)
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    return driver
