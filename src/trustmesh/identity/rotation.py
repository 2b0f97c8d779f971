"""When to renew, prepare, activate and retire CA generations: pure decisions, no I/O.

A *generation* is a root CA, the signing (intermediate) CA under it and the JWT-SVID
signing key. Its life, as in SPIRE's CA manager:

``prepared``  published in the X.509 and JWT bundles, signs nothing yet;
``active``    signs every new SVID;
``retiring``  signs nothing, stays in the bundles until every SVID it signed has expired;
then it is dropped.

So the next CA is in every bundle before it signs anything, and the old one is still there
until nothing chains to it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

#: notAfter is inclusive (RFC 5280 §4.1.2.5): keep a retiring root one second longer than
#: the last SVID it may have signed.
_INCLUSIVE = dt.timedelta(seconds=1)


class Status(StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRING = "retiring"


@dataclass(frozen=True)
class GenerationTimes:
    id: int
    status: Status
    root_not_before: dt.datetime
    root_not_after: dt.datetime
    signing_not_before: dt.datetime
    signing_not_after: dt.datetime
    activate_at: dt.datetime | None = None
    retire_at: dt.datetime | None = None


@dataclass(frozen=True)
class RotationSettings:
    max_svid_ttl: dt.timedelta
    #: The least time a prepared CA is published before it may sign (forced rotations).
    publish_delay: dt.timedelta


@dataclass(frozen=True)
class CreateInitial:
    pass


@dataclass(frozen=True)
class RenewSigningCA:
    generation: int


@dataclass(frozen=True)
class Prepare:
    activate_at: dt.datetime


@dataclass(frozen=True)
class Activate:
    generation: int
    retire_previous_at: dt.datetime


@dataclass(frozen=True)
class Retire:
    generation: int


Action = CreateInitial | RenewSigningCA | Prepare | Activate | Retire


def _fraction(start: dt.datetime, end: dt.datetime, f: float) -> dt.datetime:
    return start + (end - start) * f


def plan(
    now: dt.datetime, generations: list[GenerationTimes], settings: RotationSettings
) -> list[Action]:
    """What to do at ``now``. Applying every returned action brings the CA up to date."""
    active = [g for g in generations if g.status is Status.ACTIVE]
    if not active:
        return _without_active(now, generations, settings)
    current = active[0]
    if now >= current.root_not_after:
        # Down for longer than the root lived: nothing it signed is valid any more, so
        # there is nothing to hand over; start again from a new root.
        return [*(Retire(g.id) for g in generations), CreateInitial()]
    actions: list[Action] = [Retire(g.id) for g in generations if _retired_by(g, now)]
    prepared = next((g for g in generations if g.status is Status.PREPARED), None)
    if prepared is None:
        actions.extend(_prepare(now, current, settings))
    elif prepared.activate_at is not None and now >= prepared.activate_at:
        actions.append(Activate(prepared.id, now + settings.max_svid_ttl + _INCLUSIVE))
        return actions
    # The signing CA renews at half its life, under the same root: no bundle change.
    if now >= _fraction(current.signing_not_before, current.signing_not_after, 0.5):
        actions.append(RenewSigningCA(current.id))
    return actions


def _without_active(
    now: dt.datetime, generations: list[GenerationTimes], settings: RotationSettings
) -> list[Action]:
    published = [g for g in generations if g.status is Status.PREPARED]
    if published:  # a crash between two steps: activate what was published
        return [Activate(published[0].id, now + settings.max_svid_ttl + _INCLUSIVE)]
    return [CreateInitial()]


def _retired_by(generation: GenerationTimes, now: dt.datetime) -> bool:
    """A retiring generation whose last SVID has expired: out of the bundles."""
    retire_at = generation.retire_at
    return generation.status is Status.RETIRING and retire_at is not None and now >= retire_at


def _prepare(
    now: dt.datetime, current: GenerationTimes, settings: RotationSettings
) -> list[Action]:
    """Prepare at half of the root's life; it activates at five sixths (as SPIRE does)."""
    if now < _fraction(current.root_not_before, current.root_not_after, 0.5):
        return []
    activate_at = max(
        _fraction(current.root_not_before, current.root_not_after, 5 / 6),
        now + settings.publish_delay,
    )
    if activate_at >= current.root_not_after:
        # Prepared late (the service was down): the publish delay no longer fits
        # before the current root ends; hand over halfway to its end instead.
        activate_at = now + (current.root_not_after - now) / 2
    return [Prepare(activate_at)]


def force_prepare(now: dt.datetime, settings: RotationSettings) -> Prepare:
    """An operator-requested rotation: publish now, sign after the publish delay."""
    return Prepare(now + settings.publish_delay)
