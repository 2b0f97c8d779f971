"""The balancer's decisions, pure: examples for each rule, and properties over random
sequences of requests, outcomes, probes and time."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import example, given
from hypothesis import strategies as st

from trustmesh.gateway.balancer import Balancer, HealthRules, OutlierRules

KEYS = ("https://a:1", "https://b:1", "https://c:1", "https://d:1")


def _pool(
    n: int = 3,
    *,
    balance: str = "least_requests",
    failures: int = 2,
    percent: int = 50,
    ejection: float = 10.0,
    max_ejection: float = 60.0,
) -> Balancer:
    b = Balancer(
        balance=balance,  # type: ignore[arg-type]
        outlier=OutlierRules(failures, ejection, max_ejection, percent),
        health=HealthRules(unhealthy_after=2, healthy_after=1),
        rng=random.Random(7),
    )
    b.update(KEYS[:n])
    return b


def _fail(b: Balancer, key: str, times: int, now: float) -> list[str]:
    states = []
    for _ in range(times):
        states += [c.state for c in b.record(key, False, now, "status 500")]
    return states


# --- examples -------------------------------------------------------------------------


def test_round_robin_takes_turns_and_skips_what_is_out() -> None:
    b = _pool(3, balance="round_robin")
    assert [b.pick(0).key for _ in range(6)] == [*KEYS[:3], *KEYS[:3]]
    b.probe(KEYS[1], False)
    b.probe(KEYS[1], False)
    assert [b.pick(0).key for _ in range(4)] == [KEYS[0], KEYS[2], KEYS[0], KEYS[2]]


def test_least_requests_takes_the_least_loaded() -> None:
    b = _pool(3)
    b.begin(KEYS[0])
    b.begin(KEYS[0])
    b.begin(KEYS[1])
    assert {b.pick(0).key for _ in range(20)} == {KEYS[2]}
    b.begin(KEYS[2])
    assert {b.pick(0).key for _ in range(40)} == {KEYS[1], KEYS[2]}  # ties: at random
    b.end(KEYS[0])
    b.end(KEYS[0])
    assert {b.pick(0).key for _ in range(20)} == {KEYS[0]}


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    b = _pool(3, failures=3)
    assert _fail(b, KEYS[0], 2, 0) == []
    b.record(KEYS[0], True, 0)
    assert _fail(b, KEYS[0], 2, 0) == []  # the count started again
    assert _fail(b, KEYS[0], 1, 0) == ["ejected"]
    assert not b.eligible(KEYS[0], 5)
    assert KEYS[0] not in {b.pick(5).key for _ in range(20)}


def test_ejection_ends_on_probation_then_doubles_up_to_the_max() -> None:
    b = _pool(3, failures=2, ejection=10, max_ejection=25)
    _fail(b, KEYS[0], 2, 0)
    assert b.views(0)[0].ejected_until == 10
    pick = b.pick(10)
    assert [(c.key, c.state) for c in pick.changes] == [(KEYS[0], "restored")]
    # on probation: one failure is enough, for twice as long
    assert _fail(b, KEYS[0], 1, 10) == ["ejected"]
    assert b.views(10)[0].ejected_until == 30
    b.expire(30)
    assert _fail(b, KEYS[0], 1, 30) == ["ejected"]
    assert b.views(30)[0].ejected_until == 55  # 40 capped at 25


def test_the_doubling_resets_once_it_stays_good() -> None:
    b = _pool(3, failures=1, ejection=10, max_ejection=100)
    _fail(b, KEYS[0], 1, 0)
    b.expire(10)
    _fail(b, KEYS[0], 1, 10)  # out for 20
    b.expire(30)
    b.record(KEYS[0], True, 31)  # back, good, but not yet for as long as it was away
    assert b.views(31)[0].ejections == 2
    b.record(KEYS[0], True, 50)
    assert b.views(50)[0].ejections == 0
    _fail(b, KEYS[0], 1, 50)
    assert b.views(50)[0].ejected_until == 60  # the base again


def test_the_cap_keeps_failing_instances_in_rotation_while_one_works() -> None:
    b = _pool(4, failures=1, percent=50)
    assert _fail(b, KEYS[0], 1, 0) == ["ejected"]
    assert _fail(b, KEYS[1], 1, 0) == ["ejected"]
    assert _fail(b, KEYS[2], 1, 0) == []  # 3 of 4 would be over 50 %
    assert b.ejected_count(0) == 2
    assert b.eligible(KEYS[2], 0)


def test_when_every_instance_fails_all_are_ejected_and_nothing_is_picked() -> None:
    b = _pool(3, failures=1, percent=34)  # one of three at most
    assert _fail(b, KEYS[0], 1, 0) == ["ejected"]
    assert _fail(b, KEYS[1], 1, 0) == []  # capped: KEYS[2] has not failed
    assert sorted(_fail(b, KEYS[2], 1, 0)) == ["ejected", "ejected"]
    assert b.pick(1).key is None
    assert b.ejected_count(1) == 3


def test_a_single_instance_pool_that_fails_is_ejected() -> None:
    b = _pool(1, failures=2, percent=50)  # the cap alone (0 of 1) would never eject it
    assert _fail(b, KEYS[0], 2, 0) == ["ejected"]
    assert b.pick(1).key is None


def test_health_probes_flip_after_enough_in_a_row() -> None:
    b = _pool(2)
    assert b.probe(KEYS[0], False) == ()
    b.probe(KEYS[0], True)
    assert b.probe(KEYS[0], False) == ()  # not two in a row
    (change,) = b.probe(KEYS[0], False, "timeout")
    assert (change.state, change.why) == ("unhealthy", "2 health checks failed (last: timeout)")
    assert {b.pick(0).key for _ in range(10)} == {KEYS[1]}
    (change,) = b.probe(KEYS[0], True)
    assert change.state == "healthy"
    assert b.eligible(KEYS[0], 0)


def test_nothing_healthy_means_no_pick() -> None:
    b = _pool(2)
    for key in KEYS[:2]:
        b.probe(key, False)
        b.probe(key, False)
    assert b.pick(0).key is None


def test_update_keeps_the_state_of_instances_that_stay() -> None:
    b = _pool(3, failures=1)
    _fail(b, KEYS[0], 1, 0)
    b.begin(KEYS[1])
    assert b.update([KEYS[1], KEYS[0], KEYS[3]]) == (KEYS[2],)
    views = {v.key: v for v in b.views(0)}
    assert views[KEYS[0]].ejected_until is not None
    assert views[KEYS[1]].in_flight == 1
    assert views[KEYS[3]].healthy
    b.record(KEYS[2], False, 0)  # an answer from an instance that left: ignored
    b.end(KEYS[2])


# --- properties -----------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("probe"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("begin"), st.integers(0, 3), st.just(True)),
        st.tuples(st.just("end"), st.integers(0, 3), st.just(True)),
        st.tuples(st.just("wait"), st.integers(0, 40), st.just(True)),
        st.tuples(st.just("pick"), st.integers(0, 3), st.just(True)),
    ),
    max_size=80,
)
_settings = st.tuples(
    st.integers(1, 4),  # pool size
    st.sampled_from(["round_robin", "least_requests"]),
    st.integers(1, 4),  # consecutive failures
    st.integers(0, 100),  # max ejected percent
)


def _run(
    settings: tuple[int, str, int, int], ops: list[tuple[str, int, bool]], check: object
) -> None:
    n, balance, failures, percent = settings
    b = _pool(n, balance=balance, failures=failures, percent=percent, ejection=5, max_ejection=20)
    now = 0.0
    for op, arg, flag in ops:
        key = KEYS[arg % n]
        if op == "record":
            before = b.ejected_count(now)
            b.record(key, flag, now)
            assert callable(check)
            check(b, now, before, op)
        elif op == "probe":
            b.probe(key, flag)
        elif op == "begin":
            b.begin(key)
        elif op == "end":
            b.end(key)
        elif op == "wait":
            now += arg
        else:
            check(b, now, None, op)


@given(_settings, _ops, st.sets(st.integers(0, 3)))
def test_never_picks_an_ejected_unhealthy_or_excluded_instance_while_one_is_eligible(
    settings: tuple[int, str, int, int], ops: list[tuple[str, int, bool]], exclude: set[int]
) -> None:
    def check(b: Balancer, now: float, _before: int | None, _op: str) -> None:
        skip = [KEYS[i] for i in exclude]
        picked = b.pick(now, skip).key
        eligible = [k for k in b.keys if k not in skip and b.eligible(k, now)]
        if eligible:
            assert picked in eligible
        else:
            assert picked is None

    _run(settings, ops, check)


@given(_settings, _ops)
def test_least_requests_picks_one_with_the_fewest_in_flight(
    settings: tuple[int, str, int, int], ops: list[tuple[str, int, bool]]
) -> None:
    settings = (settings[0], "least_requests", settings[2], settings[3])

    def check(b: Balancer, now: float, _before: int | None, _op: str) -> None:
        picked = b.pick(now).key
        loads = {v.key: v.in_flight for v in b.views(now) if b.eligible(v.key, now)}
        if picked is not None:
            assert loads[picked] == min(loads.values())

    _run(settings, ops, check)


@given(_settings, _ops)
@example((3, "least_requests", 1, 34), [("record", 0, False), ("record", 1, False)])
def test_ejections_over_the_cap_only_ever_leave_nothing_to_pick(
    settings: tuple[int, str, int, int], ops: list[tuple[str, int, bool]]
) -> None:
    """Over max_ejected_percent only when every instance is failing: then no instance is
    left in rotation (a fast 503), never a pool with working instances turned away."""
    n, _, _, percent = settings

    def check(b: Balancer, now: float, before: int | None, op: str) -> None:
        count = b.ejected_count(now)
        if op == "record" and before is not None and count > before and count > n * percent // 100:
            assert not any(b.eligible(k, now) for k in b.keys)

    _run(settings, ops, check)


@given(_settings, _ops)
@example((2, "round_robin", 1, 0), [("record", 1, False)])
@example((4, "least_requests", 1, 50), [("record", i, False) for i in (1, 2, 3)])
def test_while_one_instance_never_fails_the_ejected_share_stays_under_the_cap(
    settings: tuple[int, str, int, int], ops: list[tuple[str, int, bool]]
) -> None:
    n, _, _, percent = settings
    good = KEYS[0]
    ops = [
        (op, arg, True if op in ("record", "probe") and KEYS[arg % n] == good else flag)
        for op, arg, flag in ops
    ]

    def check(b: Balancer, now: float, _before: int | None, _op: str) -> None:
        assert b.ejected_count(now) <= n * percent // 100
        assert b.eligible(good, now)

    _run(settings, ops, check)


@given(st.integers(1, 40), st.floats(0.5, 100), st.floats(0.5, 1000))
def test_ejection_time_doubles_and_never_exceeds_the_max(
    ejections: int, base: float, ceiling: float
) -> None:
    rules = OutlierRules(1, base, ceiling, 50)
    duration = rules.duration(ejections)
    assert duration <= ceiling
    assert duration == min(base * 2 ** (ejections - 1), ceiling)


def test_round_robin_is_fair_over_many_picks() -> None:
    b = _pool(4, balance="round_robin")
    counts = Counter(b.pick(0).key for _ in range(400))
    assert set(counts.values()) == {100}
