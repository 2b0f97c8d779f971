"""TOTP against RFC 6238's Appendix B vectors (from the cryptography-vectors package),
replay and window rules; argon2id password storage; the lockout policy."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cryptography_vectors
import pytest

from trustmesh import crypto
from trustmesh.auth.lockout import (
    LockoutPolicy,
    LoginState,
    after_failure,
    after_success,
    normalize_login,
)
from trustmesh.errors import UsageError

VECTORS = Path(cryptography_vectors.__file__).parent / "twofactor" / "rfc-6238.txt"


def _vectors() -> list[dict[str, str]]:
    cases, current = [], {}
    for line in VECTORS.read_text().splitlines():
        if " = " in line:
            key, _, value = line.partition(" = ")
            current[key.strip()] = value.strip()
        elif not line.strip() and current:
            cases.append(current)
            current = {}
    if current:
        cases.append(current)
    return cases


def test_there_are_rfc_6238_vectors() -> None:
    assert len(_vectors()) == 18


@pytest.mark.parametrize("case", _vectors(), ids=lambda c: f"{c['MODE']}-{c['TIME']}")
def test_rfc_6238_appendix_b(case: dict[str, str]) -> None:
    secret = case["SECRET"].encode()
    at = int(case["TIME"])
    code = case["TOTP"]
    assert crypto.totp_code(secret, at, digits=8, algorithm=case["MODE"]) == code
    step = crypto.verify_totp(secret, code, at, digits=8, algorithm=case["MODE"])
    assert step == at // 30


def test_only_one_step_either_side_is_accepted() -> None:
    secret = crypto.new_totp_secret()
    now = 1_900_000_015.0
    for offset, accepted in ((-60, False), (-30, True), (0, True), (30, True), (60, False)):
        code = crypto.totp_code(secret, now + offset)
        assert (crypto.verify_totp(secret, code, now) is not None) is accepted, offset


def test_a_code_cannot_be_reused_even_within_its_step() -> None:
    secret = crypto.new_totp_secret()
    now = 1_900_000_000.0
    code = crypto.totp_code(secret, now)
    used = crypto.verify_totp(secret, code, now)
    assert used is not None
    assert crypto.verify_totp(secret, code, now + 5, last_step=used) is None
    # nor an older one from the window once a newer step was used
    older = crypto.totp_code(secret, now - 30)
    assert crypto.verify_totp(secret, older, now, last_step=used) is None
    later = crypto.totp_code(secret, now + 30)
    assert crypto.verify_totp(secret, later, now + 30, last_step=used) == used + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "１２３４５６", " 12345"])
def test_malformed_codes_are_refused(code: str) -> None:
    assert crypto.verify_totp(crypto.new_totp_secret(), code, time.time()) is None


def test_otpauth_uri_carries_the_secret_in_base32() -> None:
    secret = crypto.new_totp_secret()
    uri = crypto.totp_uri(secret, "alice@shop.example", "trustmesh")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    query = parse_qs(parts.query)
    padded = query["secret"][0] + "=" * (-len(query["secret"][0]) % 8)
    assert base64.b32decode(padded) == secret
    assert query["period"] == ["30"]
    assert query["digits"] == ["6"]


# -- passwords --------------------------------------------------------------------------
def test_argon2id_hash_verifies_and_carries_rfc_9106_parameters() -> None:
    stored = crypto.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert "correct horse" not in stored
    assert crypto.verify_password(stored, "correct horse battery staple")
    assert not crypto.verify_password(stored, "correct horse battery stapler")
    assert not crypto.needs_rehash(stored)
    assert crypto.hash_password("correct horse battery staple") != stored  # salted


def test_unknown_user_costs_the_same_and_never_matches() -> None:
    started = time.perf_counter()
    assert not crypto.verify_password(None, "whatever password")
    unknown = time.perf_counter() - started
    stored = crypto.hash_password("a real password here")
    started = time.perf_counter()
    assert not crypto.verify_password(stored, "a wrong password!!")
    known = time.perf_counter() - started
    assert 0.3 < unknown / known < 3.0  # the same argon2id work either way


@pytest.mark.parametrize("bad", ["short", "x" * 1025])
def test_password_policy(bad: str) -> None:
    with pytest.raises(UsageError):
        crypto.hash_password(bad)


def test_overlong_or_garbage_input_is_a_mismatch_not_an_error() -> None:
    stored = crypto.hash_password("a real password here")
    assert not crypto.verify_password(stored, "y" * 100_000)
    assert not crypto.verify_password("not a hash", "a real password here")
    assert crypto.needs_rehash("not a hash")


# -- lockout ------------------------------------------------------------------------------
def test_ten_failures_lock_with_doubling_backoff() -> None:
    policy = LockoutPolicy(threshold=5, base_delay=30, max_delay=3600)
    state, now, delays = LoginState(), 1000.0, []
    for _ in range(10):
        state = after_failure(state, now, policy)
        delays.append(state.retry_after(now))
    assert delays[:4] == [0, 0, 0, 0]
    assert delays[4:] == [30, 60, 120, 240, 480, 960]
    assert state.locked(now + 959)
    assert not state.locked(now + 960)
    assert after_success() == LoginState()


def test_backoff_is_capped() -> None:
    policy = LockoutPolicy(threshold=1, base_delay=30, max_delay=100)
    state = LoginState()
    for _ in range(20):
        state = after_failure(state, 0.0, policy)
    assert state.retry_after(0.0) == 100


def test_login_names_are_counted_case_and_space_insensitively() -> None:
    assert normalize_login("  Alice   Smith ") == normalize_login("alice smith")


def test_the_unknown_user_s_hash_is_made_where_passwords_are_checked_not_at_import() -> None:
    """≈ 0.1 s of CPU that every command and component paid at start; the provider makes
    it at its start (serve_auth), so its first unknown user costs what a known one does."""
    code = (
        "from trustmesh.crypto import _passwords as p\n"
        "assert p._dummy.cache_info().currsize == 0\n"
        "p.prepare_password_checks()\n"
        "assert p._dummy.cache_info().currsize == 1\n"
        "made = p._dummy()\n"
        "assert p.verify_password(None, 'x' * 12) is False\n"
        "assert p._dummy() is made\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
