"""The limits a proxy counts itself (nginx, where it keeps decisions): which rules it can
count, and the bucket the authorizer names for each request."""

from __future__ import annotations

from typing import Any

import pytest

from trustmesh.config.gateway import GatewayConfig
from trustmesh.gateway.ratelimit import compile_rules, proxy_limit_keys, proxy_limits


def gateway(routes: list[dict[str, Any]], **extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({"routes": routes, **extra})


def route(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"path": "/a", "to": "svc", "rate_limits": list(rules), **extra}


def test_consumer_and_route_limits_are_counted_by_the_proxy() -> None:
    config = gateway(
        [route({"per": "consumer", "limit": "10/minute"}, {"per": "route", "limit": "5/second"})],
        rate_limits=[{"per": "consumer", "limit": "1000/hour", "roles": ["customer"]}],
    )
    (limits,) = proxy_limits(config)
    assert limits is not None
    assert [(x.name, x.limit, x.window, x.per_minute) for x in limits] == [
        ("rate_limits[0]", 1000, 3600, 16),  # rounded down: stricter, never looser
        ("routes[0].rate_limits[0]", 10, 60, 10),
        ("routes[0].rate_limits[1]", 5, 1, 300),
    ]
    assert proxy_limits(gateway([route()])) == ((),)  # nothing to count: keep it all


@pytest.mark.parametrize(
    ("rules", "extra", "why"),
    [
        ([{"per": "ip", "limit": "10/minute"}], {}, "counted before the credential"),
        ([{"per": "role", "limit": "10/minute"}], {}, "a bucket per role held"),
        ([{"per": "consumer", "limit": "10/day"}], {}, "less than one a minute"),
        ([{"per": "consumer", "limit": "10/minute"}], {"modes": {"rate_limits": "dry-run"}}, "dry"),
    ],
)
def test_what_the_proxy_cannot_count_stays_with_the_authorizer(
    rules: list[dict[str, Any]], extra: dict[str, Any], why: str
) -> None:
    assert proxy_limits(gateway([route(*rules, **extra)])) == (None,), why


def test_shared_counters_stay_with_the_authorizer() -> None:
    config = gateway([route({"per": "consumer", "limit": "10/minute"})], redis="redis://x:6379/0")
    assert proxy_limits(config) == (None,)


def test_the_bucket_is_the_consumer_s_whatever_token_it_presents() -> None:
    config = gateway(
        [
            route(
                {"per": "consumer", "limit": "10/minute"},
                {"per": "consumer", "limit": "5/minute", "roles": ["admin"]},
                {"per": "route", "limit": "100/minute"},
            )
        ]
    )
    (rules,) = compile_rules(config)
    carol = proxy_limit_keys(rules, "User:carol", ("customer",), "203.0.113.7")
    again = proxy_limit_keys(rules, "User:carol", ("customer",), "198.51.100.1")
    dave = proxy_limit_keys(rules, "User:dave", ("customer", "admin"), "203.0.113.7")
    assert [zone for zone, _ in carol] == [rule.key for rule in rules]
    assert carol == again  # one consumer: one bucket, from any address
    assert carol[0][1] != dave[0][1]
    assert carol[1][1] == ""
    assert dave[1][1] != ""
    assert carol[2][1] == dave[2][1] != ""  # the route's own: shared
    anonymous = proxy_limit_keys(rules, None, (), "203.0.113.7")
    other = proxy_limit_keys(rules, None, (), "203.0.113.8")
    assert anonymous[0][1] != other[0][1]  # no consumer: counted by address


def test_a_rule_shared_with_a_route_the_authorizer_counts_is_counted_there_everywhere() -> None:
    """One consumer's bucket of a gateway-wide rule is counted in one place: by the
    authorizer on every route, as soon as one route needs it to count."""
    config = gateway(
        [
            route(),
            route({"per": "ip", "limit": "10/minute"}, path="/b"),
            {"path": "/c", "to": "svc", "rate_limits": []},
        ],
        rate_limits=[{"per": "consumer", "limit": "10/minute"}],
    )
    assert proxy_limits(config) == (None, None, None)
    apart = gateway(
        [route(), route({"per": "ip", "limit": "10/minute"}, path="/b")],
        rate_limits=[{"per": "route", "limit": "100/minute"}],  # a bucket per route
    )
    first, second = proxy_limits(apart)
    assert first is not None
    assert [x.name for x in first] == ["rate_limits[0]"]
    assert second is None
