"""The CA rotation plan (pure decisions) on hand-made generation times, and a property:
driven forward through time by its own plans, the CA always has exactly one active
generation, and only ever activates one that was published first."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.identity import rotation
from trustmesh.identity.rotation import (
    Activate,
    CreateInitial,
    GenerationTimes,
    Prepare,
    RenewSigningCA,
    Retire,
    RotationSettings,
    Status,
)

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ROOT_LIFE = dt.timedelta(days=6)  # half at day 3, five sixths at day 5
SIGNING_LIFE = dt.timedelta(days=2)
SECOND = dt.timedelta(seconds=1)
SETTINGS = RotationSettings(
    max_svid_ttl=dt.timedelta(hours=1), publish_delay=dt.timedelta(minutes=5)
)


def gen(
    gen_id: int,
    status: Status,
    *,
    born: dt.datetime = T0,
    signed: dt.datetime | None = None,
    signing_life: dt.timedelta = SIGNING_LIFE,
    activate_at: dt.datetime | None = None,
    retire_at: dt.datetime | None = None,
) -> GenerationTimes:
    signed = born if signed is None else signed
    return GenerationTimes(
        id=gen_id,
        status=status,
        root_not_before=born,
        root_not_after=born + ROOT_LIFE,
        signing_not_before=signed,
        signing_not_after=min(signed + signing_life, born + ROOT_LIFE),
        activate_at=activate_at,
        retire_at=retire_at,
    )


def fresh_active(now: dt.datetime, gen_id: int = 1, born: dt.datetime = T0) -> GenerationTimes:
    """Active, with a signing CA renewed just now (so that it does not ask to renew)."""
    return gen(gen_id, Status.ACTIVE, born=born, signed=now - SECOND)


def test_no_generation_creates_the_initial_one() -> None:
    assert rotation.plan(T0, [], SETTINGS) == [CreateInitial()]


def test_nothing_to_do_before_half_of_the_roots_life() -> None:
    for now in (T0, T0 + dt.timedelta(days=1), T0 + ROOT_LIFE / 2 - SECOND):
        assert rotation.plan(now, [fresh_active(now)], SETTINGS) == []


def test_at_half_of_the_roots_life_prepare_to_activate_at_five_sixths() -> None:
    now = T0 + ROOT_LIFE / 2
    assert rotation.plan(now, [fresh_active(now)], SETTINGS) == [
        Prepare(activate_at=T0 + ROOT_LIFE * 5 / 6)
    ]


def test_prepare_gives_at_least_the_publish_delay() -> None:
    now = T0 + ROOT_LIFE / 2
    slow = RotationSettings(max_svid_ttl=SETTINGS.max_svid_ttl, publish_delay=dt.timedelta(days=2))
    assert rotation.plan(now, [fresh_active(now)], slow) == [
        Prepare(activate_at=now + slow.publish_delay)
    ]


def test_activation_never_waits_past_the_end_of_the_current_root() -> None:
    """A publish delay longer than what is left of the root: hand over halfway to its end,
    while the old root still validates what it signed."""
    now = T0 + ROOT_LIFE / 2
    slow = RotationSettings(max_svid_ttl=SETTINGS.max_svid_ttl, publish_delay=dt.timedelta(days=4))
    assert rotation.plan(now, [fresh_active(now)], slow) == [
        Prepare(activate_at=now + (T0 + ROOT_LIFE - now) / 2)
    ]


def test_root_expired_during_downtime_starts_over() -> None:
    now = T0 + ROOT_LIFE + SECOND
    assert rotation.plan(now, [fresh_active(now)], SETTINGS) == [Retire(1), CreateInitial()]


def test_prepare_late_after_downtime_still_publishes_first() -> None:
    """Back after an outage, past five sixths: the new CA is still published before it signs."""
    now = T0 + ROOT_LIFE * 11 / 12
    assert rotation.plan(now, [fresh_active(now)], SETTINGS) == [
        Prepare(activate_at=now + SETTINGS.publish_delay)
    ]


def test_prepared_generation_does_not_activate_before_its_time() -> None:
    activate_at = T0 + ROOT_LIFE * 5 / 6
    for now in (T0 + ROOT_LIFE / 2 + SECOND, activate_at - SECOND):
        generations = [
            fresh_active(now),
            gen(2, Status.PREPARED, born=T0 + ROOT_LIFE / 2, activate_at=activate_at),
        ]
        actions = rotation.plan(now, generations, SETTINGS)
        assert not any(isinstance(a, Activate | Prepare) for a in actions), actions


def test_prepared_generation_activates_at_its_time() -> None:
    activate_at = T0 + ROOT_LIFE * 5 / 6
    for now in (activate_at, activate_at + dt.timedelta(hours=3)):
        generations = [
            fresh_active(now),
            gen(2, Status.PREPARED, born=T0 + ROOT_LIFE / 2, activate_at=activate_at),
        ]
        assert rotation.plan(now, generations, SETTINGS) == [
            Activate(generation=2, retire_previous_at=now + SETTINGS.max_svid_ttl + SECOND)
        ]


def test_retiring_generation_is_dropped_once_its_svids_have_expired() -> None:
    retire_at = T0 + ROOT_LIFE * 5 / 6 + SETTINGS.max_svid_ttl + SECOND
    now_active = fresh_active(retire_at, gen_id=2, born=T0 + ROOT_LIFE / 2)
    retiring = gen(1, Status.RETIRING, retire_at=retire_at)
    assert rotation.plan(retire_at - SECOND, [retiring, now_active], SETTINGS) == []
    assert rotation.plan(retire_at, [retiring, now_active], SETTINGS) == [Retire(1)]
    assert rotation.plan(retire_at + dt.timedelta(hours=5), [retiring, now_active], SETTINGS) == [
        Retire(1)
    ]


def test_signing_ca_renews_at_half_its_life() -> None:
    signed = T0 + dt.timedelta(hours=1)
    active = gen(1, Status.ACTIVE, signed=signed)
    assert rotation.plan(signed + SIGNING_LIFE / 2 - SECOND, [active], SETTINGS) == []
    assert rotation.plan(signed + SIGNING_LIFE / 2, [active], SETTINGS) == [RenewSigningCA(1)]


def test_only_the_active_signing_ca_renews() -> None:
    now = T0 + ROOT_LIFE / 2 + dt.timedelta(hours=1)
    generations = [
        gen(1, Status.RETIRING, signed=T0, retire_at=now + dt.timedelta(hours=1)),
        fresh_active(now, gen_id=2, born=T0 + dt.timedelta(days=1)),
    ]
    assert rotation.plan(now, generations, SETTINGS) == []


def test_prepared_without_active_after_a_crash_is_activated() -> None:
    now = T0 + dt.timedelta(days=1)
    generations = [gen(2, Status.PREPARED, activate_at=now + dt.timedelta(days=2))]
    assert rotation.plan(now, generations, SETTINGS) == [
        Activate(generation=2, retire_previous_at=now + SETTINGS.max_svid_ttl + SECOND)
    ]


def test_force_prepare_publishes_now_and_signs_after_the_delay() -> None:
    assert rotation.force_prepare(T0, SETTINGS) == Prepare(T0 + SETTINGS.publish_delay)


def test_newly_activated_signing_ca_is_valid() -> None:
    """Scheduled rotation with a signing CA much shorter-lived than the root (7 d vs 365 d
    by default): the prepared generation's signing CA was made at the root's half-life and
    has long expired when the generation activates at five sixths."""
    model = Model(SETTINGS, root_ttl=ROOT_LIFE, ca_ttl=dt.timedelta(hours=12))
    for now in (T0, T0 + ROOT_LIFE / 2, T0 + ROOT_LIFE * 5 / 6):
        model.step(now)
    active = model.active()
    assert active.id == 2
    assert active.signing_not_before <= model.now < active.signing_not_after


# -- property: the plan, applied to a small model, over time -----------------------------------


@dataclass
class Model:
    """Applies actions as CertificateAuthority._apply does, on times only."""

    settings: RotationSettings
    root_ttl: dt.timedelta
    ca_ttl: dt.timedelta

    def __post_init__(self) -> None:
        self.generations: list[GenerationTimes] = []
        self.last_id = 0
        self.now = T0
        self.published_at: dict[int, dt.datetime] = {}
        self.activated_at: dict[int, dt.datetime] = {}
        self.deactivated_at: dict[int, dt.datetime] = {}
        self.removed_at: dict[int, dt.datetime] = {}

    def active(self) -> GenerationTimes:
        (only,) = [g for g in self.generations if g.status is Status.ACTIVE]
        return only

    def _new(self, status: Status, activate_at: dt.datetime | None) -> GenerationTimes:
        gen_id = self.last_id = max([self.last_id, *(g.id for g in self.generations)]) + 1
        root_not_after = self.now + self.root_ttl
        self.published_at[gen_id] = self.now
        return GenerationTimes(
            id=gen_id,
            status=status,
            root_not_before=self.now,
            root_not_after=root_not_after,
            signing_not_before=self.now,
            signing_not_after=min(self.now + self.ca_ttl, root_not_after),
            activate_at=activate_at,
        )

    def step(self, now: dt.datetime) -> list[rotation.Action]:
        self.now = now
        actions = rotation.plan(now, list(self.generations), self.settings)
        for action in actions:
            match action:
                case CreateInitial():
                    new = self._new(Status.ACTIVE, None)
                    self.activated_at[new.id] = now
                    self.generations.append(new)
                case Prepare(activate_at=activate_at):
                    self.generations.append(self._new(Status.PREPARED, activate_at))
                case Activate(generation=gen_id, retire_previous_at=retire_at):
                    updated = []
                    for g in self.generations:
                        if g.status is Status.ACTIVE:
                            self.deactivated_at[g.id] = now
                            g = replace(g, status=Status.RETIRING, retire_at=retire_at)
                        elif g.id == gen_id:
                            # as CertificateAuthority does: a fresh signing CA at activation
                            self.activated_at[g.id] = now
                            g = replace(
                                g,
                                status=Status.ACTIVE,
                                activate_at=now,
                                signing_not_before=now,
                                signing_not_after=min(now + self.ca_ttl, g.root_not_after),
                            )
                        updated.append(g)
                    self.generations = updated
                case Retire(generation=gen_id):
                    self.removed_at[gen_id] = now
                    self.generations = [g for g in self.generations if g.id != gen_id]
                case RenewSigningCA(generation=gen_id):
                    self.generations = [
                        replace(
                            g,
                            signing_not_before=now,
                            signing_not_after=min(now + self.ca_ttl, g.root_not_after),
                        )
                        if g.id == gen_id
                        else g
                        for g in self.generations
                    ]
        return actions


_HOUR = dt.timedelta(hours=1)


@settings(max_examples=300, deadline=None)
@given(
    root_hours=st.integers(min_value=6, max_value=24 * 400),
    ca_fraction=st.floats(min_value=0.01, max_value=1.5),
    svid_minutes=st.integers(min_value=1, max_value=24 * 60),
    delay_minutes=st.integers(min_value=0, max_value=24 * 60),
    steps=st.lists(st.floats(min_value=0.0001, max_value=0.5), min_size=1, max_size=60),
)
def test_exactly_one_active_and_only_published_generations_activate(
    root_hours: int,
    ca_fraction: float,
    svid_minutes: int,
    delay_minutes: int,
    steps: list[float],
) -> None:
    root_ttl = root_hours * _HOUR
    model = Model(
        RotationSettings(
            max_svid_ttl=dt.timedelta(minutes=svid_minutes),
            publish_delay=dt.timedelta(minutes=delay_minutes),
        ),
        root_ttl=root_ttl,
        ca_ttl=max(root_ttl * ca_fraction, _HOUR),
    )
    assert model.step(T0) == [CreateInitial()]
    model.active()
    now = T0
    for fraction in steps:  # each step a fraction of the root's life, in whole seconds
        now += max(SECOND, dt.timedelta(seconds=int(root_ttl.total_seconds() * fraction)))
        before = {g.id: g.status for g in model.generations}
        old_root_end = model.active().root_not_after
        expired = old_root_end <= now
        model.step(now)
        active = model.active()  # exactly one, or this raises
        if expired:
            # no tick for longer than the root lived: nothing it signed is valid, so the
            # CA starts over from a new root (there is nothing to hand over)
            assert active.id not in before
            assert len(model.generations) == 1
            continue
        if before.get(active.id) is not Status.ACTIVE:
            # it became active now: it was published (prepared) at an earlier step ...
            assert before.get(active.id) is Status.PREPARED
            assert model.published_at[active.id] < now
            # ... for at least the publish delay or, where that no longer fit before the
            # old root's end, half of what was left of it
            published = model.published_at[active.id]
            assert now - published >= min(
                model.settings.publish_delay, (old_root_end - published) / 2
            )
        for gen_id, status in before.items():
            after = next((g for g in model.generations if g.id == gen_id), None)
            if status is Status.ACTIVE and after is not None and after.status is not Status.ACTIVE:
                assert after.status is Status.RETIRING  # still in the bundle
            if after is None:
                # dropped only once every SVID it could have signed has expired
                assert status is Status.RETIRING
                assert now >= model.deactivated_at[gen_id] + model.settings.max_svid_ttl
