"""The ``runtime:`` profile of a service (trustmesh.config.runtime): its defaults, and a bad
declaration refused with an error that names the file, the line and the key."""

from __future__ import annotations

import ipaddress

import pytest

from trustmesh.config import default_config_path, load_config, parse_config
from trustmesh.config.runtime import ConnectRule, RuntimeProfile, parse_connect_rule
from trustmesh.errors import ConfigError


def declared(runtime: str) -> str:
    return (
        "trust_domain: shop.example\n"
        "services:\n"
        "  orders:\n"
        "    run: shop.orders:app\n"
        f"    runtime: {runtime}\n"
    )


def test_a_service_without_a_profile_is_monitored_with_nothing_declared() -> None:
    config = parse_config(declared("{}"), source="t.yaml")
    profile = config.services["orders"].runtime
    assert profile == RuntimeProfile()
    assert profile.mode == "monitor"
    assert (profile.connect, profile.writable) == ([], [])
    allowed = (profile.subprocess, profile.deserialize, profile.dynamic_code)
    assert (*allowed, profile.native_libraries) == (False, False, False, False)
    bare = parse_config(declared("{}").replace("    runtime: {}\n", ""), source="t.yaml")
    assert bare.services["orders"].runtime == RuntimeProfile()


def test_the_demo_shop_is_enforced() -> None:
    config = load_config(default_config_path())
    for name in ("inventory", "payments", "orders"):
        assert config.services[name].runtime.mode == "enforce", name


def test_connect_rules_parse() -> None:
    assert parse_connect_rule("api.example.com:443") == ConnectRule(
        host="api.example.com", network=None, port=443
    )
    assert parse_connect_rule("10.0.0.0/8:*") == ConnectRule(
        host=None, network=ipaddress.ip_network("10.0.0.0/8"), port=None
    )
    assert parse_connect_rule("[2001:db8::1]:5432").network == ipaddress.ip_network(
        "2001:db8::1/128"
    )
    assert parse_connect_rule("192.0.2.7:80").network == ipaddress.ip_network("192.0.2.7/32")


@pytest.mark.parametrize(
    ("runtime", "key", "says"),
    [
        ("{mode: block}", "runtime.mode", "'monitor' or 'enforce'"),
        ("{connect: [api.example.com]}", "runtime.connect[0]", "has no ':port'"),
        ("{connect: ['10.0.0.1/8:53']}", "runtime.connect[0]", "is not an IP address or network"),
        ("{connect: ['x.example:99999']}", "runtime.connect[0]", "'99999' is not a port"),
        ("{connect: ['x.example:0']}", "runtime.connect[0]", "'0' is not a port"),
        ("{connect: ['::1:443']}", "runtime.connect[0]", "an IPv6 address goes in brackets"),
        ("{connect: ['*:443']}", "runtime.connect[0]", "is not a lowercase DNS name"),
        ("{connect: ['Evil.Example:443']}", "runtime.connect[0]", "is not a lowercase DNS name"),
        ("{writable: [tmp/orders]}", "runtime.writable[0]", "is not an absolute path"),
        ("{writable: [/]}", "runtime.writable[0]", "would make every file writable"),
        ("{writable: [/var/../etc]}", "runtime.writable[0]", "contains '..'"),
        ("{subprocess: 'yes'}", "runtime.subprocess", "true or false"),
        ("{pickle: true}", "runtime.pickle", "unknown key 'pickle'"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_key(runtime: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(declared(runtime), source="shop.yaml")
    message = str(info.value.detail)
    assert f"shop.yaml:5: services.orders.{key}: " in message, message
    assert says in message, message
    assert info.value.code == "invalid_config"


@pytest.mark.parametrize("how", ["command: [python, -m, shop]", "external: true"])
def test_a_profile_where_no_runner_would_hold_it_is_refused(how: str) -> None:
    text = declared("{mode: enforce}").replace("    run: shop.orders:app\n", f"    {how}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="shop.yaml")
    message = str(info.value.detail)
    assert "services.orders.runtime: a runtime profile is held only in a service" in message
