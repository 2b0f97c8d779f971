"""The signing-key rotation protocol of :mod:`trustmesh.auth.keys`, driven through time.

A small model applies :func:`plan`'s actions to a list of :class:`KeyState` (the store)
and checks the protocol after every tick: one signer, publish before sign, keep a key
until its tokens have expired, at most one pending key, and ``plan`` idempotent.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.auth.keys import (
    Action,
    CreateKey,
    KeyState,
    RemoveKey,
    RetireKey,
    RotationSettings,
    plan,
    signer,
)

T0 = 1_700_000_000
S = RotationSettings(publish_delay=300, token_lifetime=900, rotate_every=86_400, leeway=60)
KEEP = S.token_lifetime + S.leeway
KIDS = itertools.count()


def apply(keys: Sequence[KeyState], actions: Sequence[Action], now: int) -> list[KeyState]:
    """What the store does with the actions (a fresh kid per new key)."""
    out = list(keys)
    for action in actions:
        if isinstance(action, CreateKey):
            out.append(KeyState(f"k{next(KIDS)}", now, action.activate_at))
        elif isinstance(action, RetireKey):
            (old,) = [k for k in out if k.kid == action.kid]
            new = KeyState(
                old.kid, old.created_at, old.activate_at, action.retire_at, action.remove_at
            )
            out[out.index(old)] = new
        else:
            (old,) = [k for k in out if k.kid == action.kid]
            out.remove(old)
    return out


def count(keys: Sequence[KeyState], now: int, status: str) -> int:
    return sum(k.status(now) == status for k in keys)


class Model:
    """Drives plan forward; records when each key signed and checks the protocol."""

    def __init__(self, s: RotationSettings, keys: Sequence[KeyState], now: int) -> None:
        self.s, self.keys, self.now = s, list(keys), now
        self.keep = s.token_lifetime + s.leeway
        self.exempt: set[str] = set()  # first / recovery keys: may sign at once
        self.last_signed: dict[str, int] = {}
        self.started = False  # a key has signed

    def sign_at(self, keys: Sequence[KeyState], t: int) -> None:
        current = signer(keys, t)
        if self.started:
            assert current is not None, f"no signer at {t}: {keys}"  # (1)
        if current is None:
            return
        self.started = True
        if current.kid not in self.exempt:  # (2) in the JWKS publish_delay before it signs
            assert current.created_at <= current.activate_at - self.s.publish_delay, current
        self.last_signed[current.kid] = max(self.last_signed.get(current.kid, t), t)

    def check_kept(self, keys: Sequence[KeyState], now: int) -> None:  # (3)
        by_kid = {k.kid: k for k in keys}
        for kid, last in self.last_signed.items():
            key = by_kid.get(kid)
            if now < last + self.keep:
                assert key is not None, f"{kid} signed at {last}, dropped at {now}"
                assert key.status(now) != "removed", (key, last, now)
            if key is not None and key.remove_at is not None:
                assert key.remove_at >= last + self.keep, (key, last)

    def tick(self, now: int, *, rotate: bool = False) -> list[Action]:
        before, prev = self.keys, self.now
        # the signer changes only where a key's schedule does: sample just before/at those
        times = {prev, min(prev + 1, now), now}
        for k in before:
            for x in (k.activate_at, k.retire_at, k.remove_at):
                if x is not None and prev < x <= now:
                    times |= {x - 1, x}
        for t in sorted(times):
            self.sign_at(before, t)
        self.check_kept(before, now)

        actions = plan(before, now, self.s, rotate=rotate)
        nothing_on_its_way = count(before, now, "active") + count(before, now, "published") == 0
        for action in actions:
            if isinstance(action, CreateKey) and action.activate_at < now + self.s.publish_delay:
                # (2) only the first key or a recovery skips the publish delay
                assert nothing_on_its_way, (action, before)
                assert action.activate_at == now, action
        after = apply(before, actions, now)
        self.exempt |= {k.kid for k in after if k.created_at == k.activate_at == now}
        self.keys, self.now = after, now

        self.sign_at(after, now)
        self.check_kept(after, now)
        assert count(after, now, "active") == 1, after  # (1) the old one is retired
        assert count(after, now, "published") <= 1, after  # (4)
        current = signer(after, now)
        assert current is not None
        stale = 0 < self.s.rotate_every <= now - current.activate_at
        if rotate or stale:  # a replacement is on its way
            assert count(after, now, "published") == 1, (rotate, after)
        assert plan(after, now, self.s) == [], after  # (5)
        assert plan(after, now, self.s, rotate=rotate) == [], after
        return actions


rotation_settings = st.builds(
    RotationSettings,
    publish_delay=st.integers(1, 600),
    token_lifetime=st.integers(1, 3_600),
    rotate_every=st.one_of(st.just(0), st.integers(1, 20_000)),
    leeway=st.integers(0, 120),
)
steps = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 5), st.integers(0, 700), st.integers(0, 50_000)),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(s=rotation_settings, start=st.integers(0, T0), steps=steps)
def test_protocol_holds_as_time_goes_on(
    s: RotationSettings, start: int, steps: list[tuple[int, bool]]
) -> None:
    model = Model(s, [], start)
    assert model.tick(start) == [CreateKey(activate_at=start)]
    for dt, rotate in steps:
        model.tick(model.now + dt, rotate=rotate)


@settings(max_examples=200, deadline=None)
@given(
    s=rotation_settings,
    retired=st.lists(st.tuples(st.integers(0, 5_000), st.integers(1, 5_000)), max_size=4),
    steps=steps,
)
def test_recovery_from_only_retired_keys(
    s: RotationSettings, retired: list[tuple[int, int]], steps: list[tuple[int, bool]]
) -> None:
    """No key active or pending (only retiring or removed ones): a new key signs at once;
    the old ones stay until their remove_at."""
    now = T0
    keys = [
        KeyState(f"old{i}", now - 10_000, now - 9_000, now - ago, now - ago + left)
        for i, (ago, left) in enumerate(retired)
    ]
    model = Model(s, keys, now)
    assert model.tick(now)[-1] == CreateKey(activate_at=now)
    assert {k.kid for k in keys if k.status(now) != "removed"} <= {k.kid for k in model.keys}
    for dt, rotate in steps:
        model.tick(model.now + dt, rotate=rotate)


def test_first_key_signs_at_once() -> None:
    assert plan([], T0, S) == [CreateKey(activate_at=T0)]
    keys = apply([], [CreateKey(activate_at=T0)], T0)
    assert signer(keys, T0) == keys[0]
    assert plan(keys, T0, S) == []
    assert plan(keys, T0 + 1, S) == []


def test_rotate_publishes_first_and_one_pending_at_a_time() -> None:
    keys = [KeyState("a", T0, T0)]
    now = T0 + 1_000
    assert plan(keys, now, S, rotate=True) == [CreateKey(activate_at=now + S.publish_delay)]
    keys = apply(keys, plan(keys, now, S, rotate=True), now)
    (new,) = [k for k in keys if k.kid != "a"]
    assert new.status(now) == "published"
    assert signer(keys, now + S.publish_delay - 1) == keys[0]  # the old key still signs
    assert plan(keys, now + 10, S, rotate=True) == []  # at most one pending key


def test_old_key_retired_when_new_signs_and_removed_after_its_tokens_expired() -> None:
    keys = [KeyState("a", T0, T0), KeyState("b", T0 + 1_000, T0 + 1_300)]
    assert plan(keys, T0 + 1_299, S) == []
    at = T0 + 1_300
    assert signer(keys, at) == keys[1]
    assert plan(keys, at, S) == [RetireKey("a", retire_at=at, remove_at=at + KEEP)]
    keys = apply(keys, plan(keys, at, S), at)
    assert keys[0].status(at + KEEP - 1) == "retiring"
    assert plan(keys, at + KEEP - 1, S) == []
    assert keys[0].status(at + KEEP) == "removed"
    assert plan(keys, at + KEEP, S) == [RemoveKey("a")]


def test_active_key_older_than_rotate_every_is_replaced() -> None:
    keys = [KeyState("a", T0, T0)]
    assert plan(keys, T0 + S.rotate_every - 1, S) == []
    at = T0 + S.rotate_every
    assert plan(keys, at, S) == [CreateKey(activate_at=at + S.publish_delay)]
    never = RotationSettings(S.publish_delay, S.token_lifetime, rotate_every=0)
    assert plan(keys, T0 + 10 * S.rotate_every, never) == []


def test_recovery_also_removes_expired_keys() -> None:
    """Regression: the first-key/recovery branch once returned [CreateKey] alone, leaving
    a key past remove_at for the next plan at the same now (not idempotent)."""
    keys = [KeyState("a", 0, 0, retire_at=10, remove_at=20)]
    actions = plan(keys, 30, S)
    assert actions == [RemoveKey("a"), CreateKey(activate_at=30)]
    keys = apply(keys, actions, 30)
    assert plan(keys, 30, S) == []
