"""The console's sessions and pending sign-ins (trustmesh.audit.console.sessions): their
lifetimes against an injected clock, single use, constant-time CSRF tokens, bounded
tables, and only a hash of each cookie kept."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest
from consolerig import Clock

from trustmesh.audit.console.sessions import PENDING_SECONDS, Admin, PendingSignIns, Sessions

ALICE = Admin(sub="u-alice", username="alice", amr=("pwd", "otp"), auth_time=0)
BOB = Admin(sub="u-bob", username="bob", amr=("pwd", "otp"), auth_time=0)
TTL, IDLE = 3600.0, 600.0
#: RFC 7636 §4.1: code_verifier = 43*128unreserved; unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def sha256(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(clock: Clock) -> Sessions:
    return Sessions(TTL, IDLE, clock=clock)


# --- sessions ---------------------------------------------------------------------------


def test_a_session_is_found_by_its_cookie_with_the_admin_it_was_opened_for(
    sessions: Sessions,
) -> None:
    cookie, opened = sessions.open(ALICE)
    found = sessions.get(cookie)
    assert found is not None
    assert found.admin == ALICE
    assert found.csrf == opened.csrf
    assert len(cookie) >= 43  # 256 random bits, base64url


def test_each_session_has_its_own_cookie_and_csrf_token(sessions: Sessions) -> None:
    opened = [sessions.open(ALICE) for _ in range(20)]
    assert len({cookie for cookie, _ in opened}) == 20
    assert len({session.csrf for _, session in opened}) == 20
    assert all(len(session.csrf) >= 43 for _, session in opened)


def test_a_session_ends_at_its_ttl_however_recently_it_was_used(
    sessions: Sessions, clock: Clock
) -> None:
    cookie, _ = sessions.open(ALICE)
    start = clock.now
    while clock.now + IDLE / 2 < start + TTL:
        clock.advance(IDLE / 2)  # used every five minutes: never idle
        assert sessions.get(cookie) is not None
    clock.now = start + TTL - 1
    assert sessions.get(cookie) is not None
    clock.advance(1)  # exactly ttl after the sign-in
    assert sessions.get(cookie) is None
    assert len(sessions) == 0  # and it is gone, not only hidden
    clock.now = start + 1  # a clock stepped back does not bring it back
    assert sessions.get(cookie) is None


def test_a_session_ends_when_idle_since_its_last_use(sessions: Sessions, clock: Clock) -> None:
    cookie, _ = sessions.open(ALICE)
    clock.advance(IDLE - 1)
    assert sessions.get(cookie) is not None
    clock.advance(IDLE)  # idle for exactly `idle` since that use
    assert sessions.get(cookie) is None
    assert len(sessions) == 0


def test_an_unused_session_ends_at_idle_after_it_was_opened(
    sessions: Sessions, clock: Clock
) -> None:
    cookie, _ = sessions.open(ALICE)
    clock.advance(IDLE)
    assert sessions.get(cookie) is None


def test_each_use_starts_the_idle_time_again(sessions: Sessions, clock: Clock) -> None:
    cookie, _ = sessions.open(ALICE)
    for _ in range(5):  # 5 * 0.75 idle since the sign-in: alive only if each use counts
        clock.advance(IDLE * 0.75)
        found = sessions.get(cookie)
        assert found is not None
        assert found.seen == clock.now


@pytest.mark.parametrize("cookie", [None, "", "not-a-session", "x" * 43])
def test_an_unknown_cookie_names_no_session(sessions: Sessions, cookie: str | None) -> None:
    sessions.open(ALICE)
    assert sessions.get(cookie) is None


def test_a_cookie_over_256_characters_is_not_even_looked_up(sessions: Sessions) -> None:
    _, session = sessions.open(ALICE)
    for length in (256, 257):  # planted under the hash of a cookie of that length
        sessions._held[sha256("c" * length)] = session
    assert sessions.get("c" * 256) is not None
    assert sessions.get("c" * 257) is None
    assert sessions.get("c" * 100_000) is None


def test_closing_a_session_ends_it(sessions: Sessions) -> None:
    cookie, _ = sessions.open(ALICE)
    other, _ = sessions.open(BOB)
    closed = sessions.close(cookie)
    assert closed is not None
    assert closed.admin == ALICE
    assert sessions.get(cookie) is None
    assert sessions.close(cookie) is None
    assert sessions.close(None) is None
    assert sessions.close("") is None
    assert sessions.get(other) is not None  # only that one


def test_the_csrf_token_matches_only_its_own_session(sessions: Sessions) -> None:
    _, alice = sessions.open(ALICE)
    _, bob = sessions.open(BOB)
    assert Sessions.csrf_ok(alice, alice.csrf)
    assert not Sessions.csrf_ok(alice, bob.csrf)
    assert not Sessions.csrf_ok(alice, None)
    assert not Sessions.csrf_ok(alice, "")
    assert not Sessions.csrf_ok(alice, alice.csrf[:-1])
    assert not Sessions.csrf_ok(alice, alice.csrf + "x")
    assert not Sessions.csrf_ok(alice, alice.csrf.upper())
    # non-ASCII text is compared too (hmac.compare_digest refuses a str that is not ASCII)
    assert not Sessions.csrf_ok(alice, "é" * len(alice.csrf))


def test_a_full_table_ends_the_oldest_session_first(clock: Clock) -> None:
    sessions = Sessions(TTL, IDLE, clock=clock, capacity=3)
    cookies = []
    for _ in range(5):
        cookies.append(sessions.open(ALICE)[0])
        clock.advance(1)
        assert len(sessions) <= 3
    assert [sessions.get(c) is not None for c in cookies] == [False, False, True, True, True]


def test_only_a_hash_of_the_cookie_is_kept(sessions: Sessions) -> None:
    cookie, _ = sessions.open(ALICE)
    assert cookie not in sessions._held
    assert list(sessions._held) == [sha256(cookie)]
    assert cookie not in repr(sessions._held)


# --- pending sign-ins -------------------------------------------------------------------


@pytest.fixture
def signins(clock: Clock) -> PendingSignIns:
    return PendingSignIns(clock=clock)


def test_a_pending_sign_in_is_taken_once_with_its_own_state(signins: PendingSignIns) -> None:
    cookie, pending = signins.begin()
    assert signins.take(cookie, pending.state) == pending
    assert signins.take(cookie, pending.state) is None  # a replayed callback


def test_a_wrong_state_is_refused_and_ends_the_sign_in(signins: PendingSignIns) -> None:
    cookie, pending = signins.begin()
    assert signins.take(cookie, pending.state + "x") is None
    assert signins.take(cookie, pending.state) is None  # no second guess
    assert len(signins._held) == 0


def test_the_state_of_another_sign_in_is_refused(signins: PendingSignIns) -> None:
    mine, _ = signins.begin()
    _, theirs = signins.begin()
    assert signins.take(mine, theirs.state) is None


@pytest.mark.parametrize(("cookie", "state"), [(None, "s"), ("", "s"), ("unknown", "s")])
def test_a_sign_in_needs_its_cookie(
    signins: PendingSignIns, cookie: str | None, state: str
) -> None:
    signins.begin()
    assert signins.take(cookie, state) is None


def test_an_oversized_sign_in_cookie_is_not_looked_up(signins: PendingSignIns) -> None:
    _, pending = signins.begin()
    signins._held[sha256("c" * 257)] = pending
    assert signins.take("c" * 257, pending.state) is None


def test_a_sign_in_expires_after_its_ten_minutes(signins: PendingSignIns, clock: Clock) -> None:
    late, stale = signins.begin()
    timely, fresh = signins.begin()
    clock.advance(PENDING_SECONDS - 1)
    assert signins.take(timely, fresh.state) == fresh
    clock.advance(1)
    assert signins.take(late, stale.state) is None


def test_the_verifier_state_and_nonce_are_fresh_and_well_formed(signins: PendingSignIns) -> None:
    begun = [signins.begin() for _ in range(20)]
    for _, pending in begun:
        assert VERIFIER.fullmatch(pending.verifier), pending.verifier
        assert len(pending.state) >= 32
        assert len(pending.nonce) >= 32
        assert pending.state != pending.nonce
    for field in ("state", "nonce", "verifier"):
        assert len({getattr(p, field) for _, p in begun}) == 20
    assert len({cookie for cookie, _ in begun}) == 20


def test_a_flood_of_sign_ins_ends_the_oldest_and_holds_no_more_than_capacity(
    clock: Clock,
) -> None:
    signins = PendingSignIns(clock=clock, capacity=4)
    begun = [signins.begin() for _ in range(10)]
    assert len(signins._held) == 4
    taken = [signins.take(cookie, p.state) is not None for cookie, p in begun]
    assert taken == [False] * 6 + [True] * 4


def test_only_a_hash_of_the_sign_in_cookie_is_kept(signins: PendingSignIns) -> None:
    cookie, _ = signins.begin()
    assert list(signins._held) == [sha256(cookie)]


# --- sessions kept in a file: a restarted collector signs no one out -----------------


@pytest.fixture
def kept(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "console-sessions.db"


def test_a_session_outlives_the_collector_that_opened_it(clock: Clock, kept: Path) -> None:
    cookie, opened = Sessions(TTL, IDLE, clock=clock, path=kept).open(ALICE)
    clock.now += 60
    restarted = Sessions(TTL, IDLE, clock=clock, path=kept)
    found = restarted.get(cookie)
    assert found is not None
    assert (found.admin, found.csrf, found.started) == (ALICE, opened.csrf, opened.started)
    assert restarted.get("another cookie") is None
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    with sqlite3.connect(kept) as db:  # only the cookie's hash is kept
        (key,) = db.execute("SELECT key FROM sessions").fetchone()
    assert key == sha256(cookie)
    assert cookie not in kept.read_bytes().decode("latin-1")


def test_a_session_ended_is_ended_for_every_collector_after_it(clock: Clock, kept: Path) -> None:
    first = Sessions(TTL, IDLE, clock=clock, path=kept)
    out, _ = first.open(ALICE)
    idle, _ = first.open(BOB)
    clock.now += 10
    assert first.get(out) is not None
    assert first.close(out) is not None  # signed out
    clock.now += IDLE - 5  # idle's last use was IDLE - 5 + 10 ago
    restarted = Sessions(TTL, IDLE, clock=clock, path=kept)
    assert restarted.get(out) is None
    assert restarted.get(idle) is None  # its idle timeout ran while no collector ran
    assert restarted.close(out) is None


def test_a_restored_session_keeps_its_lifetime_and_its_use(clock: Clock, kept: Path) -> None:
    first = Sessions(TTL, IDLE, clock=clock, path=kept)
    cookie, _ = first.open(ALICE)
    for _ in range(int(TTL // (IDLE / 2)) - 1):  # used every half idle timeout, until TTL
        clock.now += IDLE / 2
        assert Sessions(TTL, IDLE, clock=clock, path=kept).get(cookie) is not None
    clock.now += IDLE / 2
    assert Sessions(TTL, IDLE, clock=clock, path=kept).get(cookie) is None  # TTL since sign-in


def test_the_file_holds_at_most_capacity_sessions(clock: Clock, kept: Path) -> None:
    sessions = Sessions(TTL, IDLE, clock=clock, path=kept, capacity=3)
    cookies = []
    for _ in range(5):
        clock.now += 1
        cookies.append(sessions.open(ALICE)[0])
    restarted = Sessions(TTL, IDLE, clock=clock, path=kept, capacity=3)
    assert [restarted.get(c) is not None for c in cookies] == [False, False, True, True, True]
