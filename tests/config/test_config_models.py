from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from trustmesh.config import (
    HARD_MAX_SVID_TTL,
    AllowRule,
    CallSpec,
    IdentitySettings,
    ServiceSpec,
    TrustmeshConfig,
    parse_allow_rule,
)
from trustmesh.errors import NotFoundError, UsageError


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "trust_domain": "shop.example",
        "services": {
            "orders": {"run": "shop.orders:app", "port": 8001},
            "payments": {"run": "shop.payments:app", "port": 8002},
        },
        "calls": [{"from": "orders", "to": "payments", "allow": ["POST /charges"]}],
    }
    data.update(overrides)
    return data


def errors(data: dict[str, Any], model: type[Any] = TrustmeshConfig) -> list[tuple[Any, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(error["loc"], error["msg"]) for error in info.value.errors()]


# --- trust domain -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain", ["shop.example", "example", "a-b_c.d9", "trustmesh.local", "x" * 255]
)
def test_valid_trust_domains(domain: str) -> None:
    assert TrustmeshConfig.model_validate(config(trust_domain=domain)).trust_domain == domain


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("Shop.example", "uppercase"),
        ("spiffe://shop.example", "scheme"),
        ("https://shop.example", "scheme"),
        ("shop.example:8443", "port"),
        ("shop..example", "empty label"),
        (".shop.example", "dot"),
        ("shop.example.", "dot"),
        ("shop/example", "not allowed: '/'"),
        ("shop example", "not allowed: ' '"),
        ("shöp.example", "not allowed"),
        ("", "empty"),
        ("x" * 256, "more than 255"),
    ],
)
def test_invalid_trust_domains_say_what_is_wrong(domain: str, says: str) -> None:
    [(loc, message)] = errors(config(trust_domain=domain))
    assert loc == ("trust_domain",)
    assert says in message
    assert "expected a SPIFFE trust domain name" in message


@given(st.text(alphabet="abcXYZ.-_09", min_size=1, max_size=30).filter(lambda s: s != s.lower()))
def test_trust_domain_never_accepts_uppercase(domain: str) -> None:
    with pytest.raises(ValidationError):
        TrustmeshConfig.model_validate(config(trust_domain=domain))


def test_trust_domain_must_be_a_string() -> None:
    [(loc, _)] = errors(config(trust_domain=42))
    assert loc == ("trust_domain",)


# --- services -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Orders", "1orders", "orders_svc", "o" * 64, "", "trustmesh"])
def test_invalid_service_names(name: str) -> None:
    data = config(services={name: {"run": "a:b"}}, calls=[])
    [(loc, message)] = errors(data)
    assert loc == ("services", name, "[key]")
    assert "expected a lowercase name" in message


def test_service_needs_exactly_one_of_run_and_command() -> None:
    assert "both" in errors({"run": "a:b", "command": ["x"]}, ServiceSpec)[0][1]
    assert "neither" in errors({"port": 8000}, ServiceSpec)[0][1]
    assert ServiceSpec.model_validate({"command": ["python", "-m", "x"]}).command == [
        "python",
        "-m",
        "x",
    ]


@pytest.mark.parametrize("run", ["module", "a.b", "a:b:c", "a b:c", "a.:b", "1a:b", "a:", ":b"])
def test_run_must_be_an_import_string(run: str) -> None:
    [(loc, message)] = errors({"run": run}, ServiceSpec)
    assert loc == ("run",)
    assert "package.module:attribute" in message


@pytest.mark.parametrize("command", [[], [""], ["python", "a\x00b"]])
def test_command_must_be_a_usable_argv(command: list[str]) -> None:
    [(loc, _)] = errors({"command": command}, ServiceSpec)
    assert loc == ("command",)


@pytest.mark.parametrize("port", [0, 80, 1023, 65536, "8000", True, 8000.0])
def test_port_range_and_type(port: object) -> None:
    [(loc, _)] = errors({"run": "a:b", "port": port}, ServiceSpec)
    assert loc == ("port",)


def test_duplicate_ports_name_both_services() -> None:
    services = {"orders": {"run": "a:b", "port": 9000}, "payments": {"run": "a:c", "port": 9000}}
    [(loc, message)] = errors(config(services=services, calls=[]))
    assert loc == ("services", "payments", "port")
    assert "'orders'" in message
    assert "'payments'" in message


# --- calls ------------------------------------------------------------------------------


def test_unknown_service_in_a_call_lists_the_known_ones() -> None:
    calls = [{"from": "orders", "to": "inventory", "allow": ["GET /items"]}]
    [(loc, message)] = errors(config(calls=calls))
    assert loc == ("calls", 0, "to")
    assert "'inventory' is not a declared service" in message
    assert "one of: orders, payments" in message


def test_self_calls_and_duplicate_pairs_are_refused() -> None:
    calls = [
        {"from": "orders", "to": "orders", "allow": ["GET /"]},
        {"from": "orders", "to": "payments", "allow": ["GET /a"]},
        {"from": "orders", "to": "payments", "allow": ["GET /b"]},
    ]
    found = errors(config(calls=calls))
    assert [loc for loc, _ in found] == [("calls", 0, "to"), ("calls", 2)]
    assert "calls itself" in found[0][1]
    assert "repeats calls[1]" in found[1][1]


def test_call_fields_and_aliases() -> None:
    assert errors({"to": "b", "allow": ["GET /"]}, CallSpec) == [(("from",), "Field required")]
    assert errors({"from": "a", "to": "b", "allow": []}, CallSpec)[0][0] == ("allow",)
    # the python name is not an accepted key in the declaration
    assert ("from_",) in [
        loc for loc, _ in errors({"from_": "a", "to": "b", "allow": ["GET /"]}, CallSpec)
    ]


def test_rules_are_parsed_once_in_order() -> None:
    call = CallSpec.model_validate(
        {"from": "a", "to": "b", "allow": ["GET /items/{id}", "* /admin/*", "POST /"]}
    )
    assert call.from_ == "a"
    assert call.rules == (
        AllowRule(method="GET", pattern="/items/{id}", segments=("items", "{id}")),
        AllowRule(method="*", pattern="/admin/*", segments=("admin", "*")),
        AllowRule(method="POST", pattern="/", segments=()),
    )
    assert call.model_dump(by_alias=True)["from"] == "a"


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("GET", "is not 'METHOD /path'"),
        ("GET/items", "is not 'METHOD /path'"),
        ("GET  /items", "is not 'METHOD /path'"),
        ("GET /items /x", "is not 'METHOD /path'"),
        ("get /items", "not an allowed HTTP method"),
        ("FETCH /items", "not an allowed HTTP method"),
        ("GET items", "does not start with '/'"),
        ("GET /items/../admin", "'..' segment"),
        ("GET /items/./x", "'.' segment"),
        ("GET /items//x", "empty segment"),
        ("GET /items/", "empty segment"),
        ("GET /items%2Fx", "percent-encoding"),
        ("GET /items\\x", "backslash"),
        ("GET /items;x=1", "';'"),
        ("GET /items\tx", "is not 'METHOD /path'"),
        ("GET /items?x=1", "query string"),
        ("GET /items#x", "fragment"),
        ("GET /*/items", "'*' before its last segment"),
        ("GET /items*", "invalid segment"),
        ("GET /{1d}", "invalid segment"),
        ("GET /a-{id}", "invalid segment"),
        ("GET /{id}/{id}", "repeats the placeholder"),
    ],
)
def test_invalid_allow_rules_are_refused(rule: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_allow_rule(rule)
    data = {"from": "a", "to": "b", "allow": ["GET /ok", rule]}
    [(loc, message)] = errors(data, CallSpec)
    assert loc == ("allow", 1)
    assert '(expected "METHOD /path"' in message


def test_repeated_allow_rule_is_refused() -> None:
    [(loc, message)] = errors({"from": "a", "to": "b", "allow": ["GET /x", "GET /x"]}, CallSpec)
    assert loc == ("allow", 1)
    assert "repeats allow[0]" in message


# --- identity TTLs ----------------------------------------------------------------------


def test_identity_defaults() -> None:
    identity = IdentitySettings()
    assert identity.svid_ttl == timedelta(hours=1)
    assert identity.max_svid_ttl == timedelta(hours=24)
    assert identity.jwt_svid_ttl == timedelta(minutes=5)
    assert identity.ca_ttl == timedelta(days=7)
    assert identity.root_ttl == timedelta(days=365)
    assert timedelta(days=7) == HARD_MAX_SVID_TTL


@pytest.mark.parametrize(
    ("settings", "loc", "says"),
    [
        ({"max_svid_ttl": "8d", "ca_ttl": "30d"}, ("max_svid_ttl",), "above the hard limit"),
        ({"svid_ttl": "2d"}, ("svid_ttl",), "longer than max_svid_ttl"),
        ({"jwt_svid_ttl": "25h"}, ("jwt_svid_ttl",), "longer than max_svid_ttl"),
        ({"ca_ttl": "47h"}, ("ca_ttl",), "at least 2 × max_svid_ttl (2d)"),
        ({"root_ttl": "13d"}, ("root_ttl",), "at least 2 × ca_ttl (14d)"),
        ({"svid_ttl": 9}, ("svid_ttl",), "at least 10s"),
        ({"svid_ttl": "0s"}, ("svid_ttl",), "not a positive duration"),
        ({"svid_ttl": -60}, ("svid_ttl",), "not a positive duration"),
        ({"svid_ttl": "1 hour"}, ("svid_ttl",), "is not a duration"),
        ({"svid_ttl": True}, ("svid_ttl",), "boolean"),
        ({"svid_ttl": 60.0}, ("svid_ttl",), "float"),
    ],
)
def test_ttl_rules(settings: dict[str, Any], loc: tuple[str, ...], says: str) -> None:
    [(found_loc, message)] = errors(settings, IdentitySettings)
    assert found_loc == loc
    assert says in message


def test_ttl_boundaries_are_inclusive() -> None:
    identity = IdentitySettings.model_validate(
        {"svid_ttl": "7d", "max_svid_ttl": "7d", "jwt_svid_ttl": 10, "ca_ttl": "14d",
         "root_ttl": "28d"}
    )  # fmt: skip
    assert identity.max_svid_ttl == HARD_MAX_SVID_TTL


def test_token_leeway_is_five_seconds_and_at_most_thirty() -> None:
    assert TrustmeshConfig.model_validate(config()).auth.token_leeway == timedelta(seconds=5)
    chosen = TrustmeshConfig.model_validate(config(auth={"token_leeway": "30s"}))
    assert chosen.auth.token_leeway == timedelta(seconds=30)
    [(loc, message)] = errors(config(auth={"token_leeway": "31s"}))
    assert loc == ("auth", "token_leeway")
    assert "at most 30s" in message
    [(loc, _)] = errors(config(auth={"token_leeway": "0s"}))
    assert loc == ("auth", "token_leeway")


# --- immutability and helpers -----------------------------------------------------------


def test_models_are_frozen() -> None:
    cfg = TrustmeshConfig.model_validate(config())
    with pytest.raises(ValidationError, match="frozen"):
        cfg.trust_domain = "evil.example"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.services["orders"].port = 1
    with pytest.raises(ValidationError, match="frozen"):
        cfg.identity.svid_ttl = timedelta(days=30)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.calls[0].rules[0].method = "*"


def test_unknown_keys_are_refused() -> None:
    [(loc, _)] = errors(config(debug=True))
    assert loc == ("debug",)


def test_spiffe_ids() -> None:
    cfg = TrustmeshConfig.model_validate(config())
    assert cfg.spiffe_id("orders") == "spiffe://shop.example/orders"
    assert cfg.component_spiffe_id("auth") == "spiffe://shop.example/trustmesh/auth"
    with pytest.raises(NotFoundError):
        cfg.spiffe_id("nobody")
    with pytest.raises(UsageError):
        cfg.component_spiffe_id("../auth")


def test_json_round_trip() -> None:
    cfg = TrustmeshConfig.model_validate(config())
    dumped = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["identity"]["max_svid_ttl"] == "1d"
    assert dumped["calls"][0]["from"] == "orders"
    assert TrustmeshConfig.model_validate(dumped) == cfg
