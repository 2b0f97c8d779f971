from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.config import (
    MAX_CONFIG_BYTES,
    TrustmeshConfig,
    config_json_schema,
    default_config_path,
    load_config,
    parse_config,
    resolve_config_path,
)
from trustmesh.errors import ConfigError

WriteConfig = Callable[[str], Path]


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="trustmesh.yaml")
    assert info.value.detail == "\n".join(info.value.problems)
    assert info.value.code == "invalid_config"
    return info.value.problems


def test_full_config_loads(valid_yaml: str, write_config: WriteConfig) -> None:
    cfg = load_config(write_config(valid_yaml))
    assert cfg.trust_domain == "shop.example"
    assert cfg.identity.svid_ttl == timedelta(minutes=30)
    assert cfg.identity.jwt_svid_ttl == timedelta(minutes=5)
    assert cfg.identity.root_ttl == timedelta(days=30)
    assert set(cfg.services) == {"orders", "payments", "inventory"}
    assert cfg.services["inventory"].command == ["python", "-m", "inventory", "--port", "8003"]
    assert [(c.from_, c.to) for c in cfg.calls] == [
        ("orders", "payments"),
        ("orders", "inventory"),
    ]
    assert [r.method for r in cfg.calls[1].rules] == ["GET", "POST", "*"]


def test_round_trip_through_json(valid_yaml: str) -> None:
    cfg = parse_config(valid_yaml, source="t")
    dumped = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = TrustmeshConfig.model_validate(dumped)
    assert again == cfg
    assert again.model_dump(mode="json", by_alias=True, exclude_none=True) == dumped


def test_typo_at_top_level_names_line_and_expected_keys(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace("dev: false", "devv: false"))
    assert problem == (
        "trustmesh.yaml:2: devv: unknown key 'devv' (did you mean 'dev'?) "
        "(expected one of: audit, auth, calls, detection, dev, gateway, identity, listen, "
        "secrets, services, shared, testing, trust_domain)"
    )


def test_nested_typo_names_path_line_and_expected_keys(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace("    port: 8001", "    prot: 8001"))
    assert problem.startswith("trustmesh.yaml:12: services.orders.prot: unknown key 'prot'")
    assert problem.endswith("(expected one of: command, external, port, run, runtime)")


def test_typo_in_a_call_uses_the_from_alias(valid_yaml: str) -> None:
    missing, typo = problems(valid_yaml.replace("  - from: orders", "  - form: orders"))
    assert missing.startswith("trustmesh.yaml:19: calls[1].from: required key 'from' is missing")
    assert typo.startswith("trustmesh.yaml:19: calls[1].form: unknown key 'form'")
    assert typo.endswith("(expected one of: allow, from, to)")


def test_missing_required_key_says_so(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace("trust_domain: shop.example\n", ""))
    assert problem == (
        "trustmesh.yaml:1: trust_domain: required key 'trust_domain' is missing "
        "(expected a value for 'trust_domain')"
    )
    [problem] = problems(valid_yaml.replace("    to: inventory\n", ""))
    assert problem.startswith("trustmesh.yaml:19: calls[1].to: required key 'to' is missing")


def test_unknown_service_in_call(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace("to: inventory", "to: inventroy"))
    assert problem == (
        "trustmesh.yaml:20: calls[1].to: 'inventroy' is not a declared service "
        "(expected one of: inventory, orders, payments)"
    )


def test_every_problem_is_reported_in_line_order(valid_yaml: str) -> None:
    text = (
        valid_yaml.replace("shop.example", "Shop.example")
        .replace("jwt_svid_ttl: 300", "jwt_svid_ttl: 5 minutes")
        .replace('"GET /items/{id}"', '"GET /items/../{id}"')
    )
    found = problems(text)
    assert [p.split(":", 3)[1:3] for p in found] == [
        ["1", " trust_domain"],
        ["6", " identity.jwt_svid_ttl"],
        ["21", " calls[1].allow[0]"],
    ]


def test_invalid_allow_rule_points_at_its_line(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace('"POST /charges"', '"POST /charges?x=1"'))
    assert problem.startswith("trustmesh.yaml:18: calls[0].allow[0]: path '/charges?x=1'")
    assert '(expected "METHOD /path"' in problem


def test_duplicate_ports(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace("port: 8003", "port: 8001"))
    assert problem == (
        "trustmesh.yaml:16: services.inventory.port: port 8001 is used by both 'orders' and "
        "'inventory' (expected a different port for each service)"
    )


def test_ttl_problems_name_the_key(valid_yaml: str) -> None:
    [problem] = problems(valid_yaml.replace("ca_ttl: 2d", "ca_ttl: 23h"))
    assert problem.startswith("trustmesh.yaml:7: identity.ca_ttl: 23h leaves no room")
    assert problem.endswith("(expected at least 2 × max_svid_ttl (1d))")


def test_duplicate_yaml_key_is_refused_with_its_line(valid_yaml: str) -> None:
    text = valid_yaml.replace("dev: false\n", "dev: false\ntrust_domain: evil.example\n")
    [problem] = problems(text)
    assert problem == (
        "trustmesh.yaml:3: duplicate key 'trust_domain' (first on line 1) "
        "(expected each key at most once in a mapping)"
    )


def test_duplicate_service_is_refused() -> None:
    text = "trust_domain: x\nservices:\n  a: {run: 'a:b'}\n  a: {run: 'a:c'}\n"
    [problem] = problems(text)
    assert problem.startswith("trustmesh.yaml:4: duplicate key 'a'")


@pytest.mark.parametrize(
    "payload",
    [
        "!!python/object/apply:os.system ['echo pwned']",
        "trust_domain: !!python/object/new:builtins.str [x]",
        "!!python/name:os.system",
    ],
)
def test_python_tags_are_refused(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    [problem] = problems(payload.replace("echo pwned", f"touch {marker}"))
    assert "could not determine a constructor" in problem
    assert not marker.exists()


def test_aliases_are_refused() -> None:
    text = "trust_domain: x\nservices:\n  a: &s {run: 'a:b'}\n  b: *s\n"
    [problem] = problems(text)
    assert problem.startswith("trustmesh.yaml:4: aliases (*name) are not allowed")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "trustmesh.yaml:1: (top level): the document is empty"),
        ("- a\n- b\n", "trustmesh.yaml:1: (top level): the document is a list, not a mapping"),
        ("just text", "the document is a str, not a mapping"),
        ("a: [1,\n", "trustmesh.yaml:2:"),
        ("[" * 100_000, "nested too deeply"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("trust_domain: x\nx: " + "9" * 5000, "trustmesh.yaml:2: cannot read this value"),
        ("trust_domain: 2024-13-45", "trustmesh.yaml:1: cannot read this value"),
        ("trust_domain: x\n\x1b[31m: 1", "trustmesh.yaml:2: character #x001b is not allowed"),
        ("? [a]\n: b", "unhashable key"),
    ],
)
def test_malformed_documents(text: str, says: str) -> None:
    [problem] = problems(text)
    assert says in problem


def test_oversized_file_is_refused(write_config: WriteConfig) -> None:
    path = write_config("trust_domain: x\n" + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(path)
    with pytest.raises(ConfigError, match="larger than"):
        parse_config(path.read_text(), source="big")


def test_non_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("trust_domain: x\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: not valid UTF-8"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


def test_packaged_default() -> None:
    cfg = load_config(default_config_path())
    assert cfg.trust_domain == "trustmesh.local"
    assert cfg.dev is True


def test_resolve_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    explicit = tmp_path / "elsewhere.yaml"
    assert resolve_config_path(explicit) == explicit
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None) == default_config_path()
    local = write_config("trust_domain: x\n")
    assert resolve_config_path(None) == Path(os.getcwd()) / local.name


def test_json_schema() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "trustmesh.yaml"
    assert schema["required"] == ["trust_domain"]
    call = schema["$defs"]["CallSpec"]
    assert set(call["required"]) == {"from", "to", "allow"}
    ttl = schema["$defs"]["IdentitySettings"]["properties"]["svid_ttl"]
    assert {branch["type"] for branch in ttl["anyOf"]} == {"integer", "string"}
    assert ttl["default"] == "1h"


_YAMLISH = st.text(alphabet=" \n\t:-[]{}!&*#'\"|>?,.%@`~abcdefot_019\\", max_size=200)


@given(st.one_of(st.text(max_size=300), _YAMLISH))
def test_parse_config_fails_only_with_config_error(text: str) -> None:
    """A cheap fuzz target: whatever the bytes, the loader answers a ConfigError or a config."""
    found: tuple[str, ...] = ()
    try:
        parse_config(text, source="fuzz")
    except ConfigError as exc:
        found = exc.problems
        assert found
    assert all(problem.startswith("fuzz") for problem in found)
