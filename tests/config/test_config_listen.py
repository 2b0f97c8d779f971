"""``listen: {host: ...}``, the address every listener binds: an IP literal (a wildcard
too), loopback by default and only loopback in dev mode; what a listener bound to it
advertises; and what a deployment pins at run time (``TRUSTMESH_LISTEN_HOST``,
``TRUSTMESH_LISTEN_PORTS``), checked as the declaration is — by ``trustmesh up`` and by
each process before it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trustmesh.config import config_json_schema, parse_config
from trustmesh.config.listen import (
    LISTEN_HOST_ENV,
    LISTEN_PORTS_ENV,
    PORT_KEYS,
    apply_listen_env,
    listen_url,
)
from trustmesh.errors import ConfigError
from trustmesh.gateway.reload import RESTART_ONLY
from trustmesh.testing import run_cli

BASE = """\
trust_domain: shop.example
dev: false
services:
  orders: {run: "trustmesh.demo.orders:app"}
"""


def _with_host(host: str, *, dev: bool = False) -> str:
    return BASE.replace("dev: false", f"dev: {str(dev).lower()}") + f"listen: {{host: {host}}}\n"


def _problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml")
    return info.value.problems


def test_the_default_is_loopback_as_before() -> None:
    config = parse_config(BASE, source="t.yaml")
    assert config.listen.host == "127.0.0.1"
    assert config.listen.url(8443) == "https://127.0.0.1:8443"
    dev = parse_config(BASE.replace("dev: false", "dev: true"), source="t.yaml")
    assert dev.listen.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("written", "host", "advertised"),
    [
        ('"127.0.0.1"', "127.0.0.1", "https://127.0.0.1:8443"),
        ('"127.0.0.2"', "127.0.0.2", "https://127.0.0.2:8443"),
        ('"::1"', "::1", "https://[::1]:8443"),
        ("0.0.0.0", "0.0.0.0", "https://127.0.0.1:8443"),  # noqa: S104 - the value under test
        ('"::"', "::", "https://[::1]:8443"),
        ('"0:0:0:0:0:0:0:0"', "::", "https://[::1]:8443"),  # one spelling
        ("10.1.2.3", "10.1.2.3", "https://10.1.2.3:8443"),
        ('"2001:db8::7"', "2001:db8::7", "https://[2001:db8::7]:8443"),
        ("169.254.10.1", "169.254.10.1", "https://169.254.10.1:8443"),
    ],
)
def test_an_ip_address_is_taken_and_advertised_where_it_connects(
    written: str, host: str, advertised: str
) -> None:
    """A wildcard names no address to connect to: its URL names loopback of its family."""
    config = parse_config(_with_host(written), source="t.yaml")
    assert config.listen.host == host
    assert config.listen.url(8443) == advertised
    assert listen_url(host, 8443) == advertised


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("localhost", "'localhost' is not an IP address"),
        ("shop.example", "'shop.example' is not an IP address"),
        ('"10.0.0.256"', "'10.0.0.256' is not an IP address"),
        ('"127.000.0.1"', "'127.000.0.1' is not an IP address"),
        ('"127.0.0.1:8443"', "'127.0.0.1:8443' is not an IP address"),
        ('"[::1]"', "'[::1]' is not an IP address"),
        ('""', "'' is not an IP address"),
        ('"fe80::1%eth0"', "'fe80::1%eth0' has a zone index"),
        ('"fe80::1"', "'fe80::1' is an IPv6 link-local address"),
        ('"::ffff:10.0.0.1"', "'::ffff:10.0.0.1' is an IPv4-mapped IPv6 address (write 10.0.0.1)"),
        ('"224.0.0.1"', "'224.0.0.1' is a multicast address"),
        ('"ff02::1"', "'ff02::1' is a multicast address"),
        ('"255.255.255.255"', "'255.255.255.255' is a reserved address"),
        ('"240.0.0.1"', "'240.0.0.1' is a reserved address"),
        ("8443", "8443 is not a string"),
        ("[127.0.0.1]", "is not a string"),
    ],
)
def test_anything_but_a_usable_ip_address_is_refused_naming_the_key(
    written: str, problem: str
) -> None:
    (line,) = _problems(_with_host(written))
    assert line.startswith("t.yaml:5: listen.host: "), line
    assert problem in line


def test_an_unknown_key_under_listen_is_refused() -> None:
    (line,) = _problems(BASE + "listen: {hots: 0.0.0.0}\n")
    assert "t.yaml:5: listen.hots: unknown key 'hots' (did you mean 'host'?)" in line


@pytest.mark.parametrize("host", ["0.0.0.0", '"::"', "10.1.2.3", '"2001:db8::7"'])  # noqa: S104
def test_dev_mode_listens_on_loopback_only(host: str) -> None:
    (line,) = _problems(_with_host(host, dev=True))
    assert line.startswith("t.yaml:5: listen.host: ")
    assert "is not a loopback address, and dev mode (dev: true) listens on loopback only" in line
    assert "expected a loopback address (127.0.0.1 or ::1), or dev: false" in line
    parse_config(_with_host(host), source="t.yaml")  # outside dev mode: taken


@pytest.mark.parametrize("host", ['"127.0.0.1"', '"127.1.2.3"', '"::1"'])
def test_dev_mode_takes_any_loopback_address(host: str) -> None:
    assert parse_config(_with_host(host, dev=True), source="t.yaml").listen.host


def test_the_schema_documents_it() -> None:
    schema = config_json_schema()
    listen = schema["$defs"]["ListenSettings"]
    assert schema["properties"]["listen"]["$ref"] == "#/$defs/ListenSettings"
    assert listen["properties"]["host"]["default"] == "127.0.0.1"
    assert listen["additionalProperties"] is False
    assert "internal_port" in schema["$defs"]["GatewayConfig"]["properties"]


# -- the gateway's internal port -------------------------------------------------------------
GATEWAY = BASE + "gateway:\n  tls_cert: c.pem\n  tls_key: k.pem\n"


def test_the_gateways_internal_port_has_a_key() -> None:
    config = parse_config(GATEWAY + "  internal_port: 9001\n", source="t.yaml")
    assert config.gateway is not None
    assert config.gateway.internal_port == 9001
    assert parse_config(GATEWAY, source="t.yaml").gateway.internal_port == 0  # type: ignore[union-attr]
    assert "internal_port" in RESTART_ONLY  # a reload cannot move a listener
    (line,) = _problems(GATEWAY + "  port: 9001\n  internal_port: 9001\n")
    assert "port and internal_port are both 9001" in line
    (line,) = _problems(GATEWAY + "  internal_port: 70000\n")
    assert "gateway.internal_port" in line


# -- pinned at run time ------------------------------------------------------------------------
FULL = """\
trust_domain: shop.example
auth: {public_listener: true, public_tls_cert: c.pem, public_tls_key: k.pem}
gateway: {tls_cert: c.pem, tls_key: k.pem}
audit: {console: {tls_cert: c.pem, tls_key: k.pem}}
secrets: {policies: []}
"""


def test_the_environment_replaces_the_address_and_pins_the_ports() -> None:
    config = parse_config(FULL, source="t.yaml")
    assert apply_listen_env(config, {}) is config  # nothing set: the declaration as written
    pinned = " ".join(f"{key}={9000 + i}" for i, key in enumerate(PORT_KEYS))
    served = apply_listen_env(config, {LISTEN_HOST_ENV: "10.244.1.17", LISTEN_PORTS_ENV: pinned})
    assert served.listen.host == "10.244.1.17"
    assert served.listen.url(9000) == "https://10.244.1.17:9000"
    assert (served.identity.discovery_port, served.auth.port, served.auth.public_port) == (
        9000,
        9001,
        9002,
    )
    assert served.secrets is not None
    assert served.secrets.port == 9003
    assert served.audit is not None
    assert served.audit.console is not None
    assert (served.audit.port, served.audit.console.port) == (9004, 9005)
    assert served.gateway is not None
    assert (served.gateway.port, served.gateway.internal_port) == (9006, 9007)
    # what is not pinned stays as declared, and the declaration itself is untouched
    assert served.auth.public_tls_cert == "c.pem"
    assert config.listen.host == "127.0.0.1"
    assert config.auth.port == 0
    # commas separate too; a section the declaration lacks stays absent
    bare = parse_config(BASE, source="t.yaml")
    served = apply_listen_env(bare, {LISTEN_PORTS_ENV: "auth.port=8443,gateway.port=9443"})
    assert served.auth.port == 8443
    assert served.gateway is None


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({LISTEN_HOST_ENV: "pod-ip"}, "TRUSTMESH_LISTEN_HOST: 'pod-ip' is not an IP address"),
        ({LISTEN_HOST_ENV: "fe80::1%eth0"}, "TRUSTMESH_LISTEN_HOST: 'fe80::1%eth0' has a zone"),
        ({LISTEN_PORTS_ENV: "auth.port"}, "TRUSTMESH_LISTEN_PORTS: 'auth.port' does not pin"),
        ({LISTEN_PORTS_ENV: "auth.port=0"}, "'auth.port=0' does not pin a listener's port"),
        ({LISTEN_PORTS_ENV: "auth.port=65536"}, "'auth.port=65536' does not pin"),
        ({LISTEN_PORTS_ENV: "auth.metrics=9000"}, "'auth.metrics=9000' does not pin"),
        ({LISTEN_PORTS_ENV: "gateway.metrics_port=9"}, "'gateway.metrics_port=9' does not pin"),
        ({LISTEN_PORTS_ENV: "auth.port=1 auth.port=2"}, "auth.port is pinned twice"),
    ],
)
def test_a_bad_value_in_the_environment_is_refused_naming_it(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        apply_listen_env(parse_config(BASE, source="t.yaml"), environ)
    assert problem in info.value.detail


def test_the_environment_cannot_take_a_dev_stack_off_loopback() -> None:
    dev = parse_config(BASE.replace("dev: false", "dev: true"), source="t.yaml")
    with pytest.raises(ConfigError) as info:
        apply_listen_env(dev, {LISTEN_HOST_ENV: "0.0.0.0"})  # noqa: S104 - refused here
    assert info.value.detail.startswith("TRUSTMESH_LISTEN_HOST: 0.0.0.0 is not a loopback")
    assert apply_listen_env(dev, {LISTEN_HOST_ENV: "::1"}).listen.host == "::1"


def test_up_and_a_component_refuse_a_bad_address_before_starting(tmp_path: Path) -> None:
    """`up` checks what every process it starts would be given (nothing starts, nothing is
    written); a component started alone refuses too (exit 2, the variable named)."""
    path = tmp_path / "trustmesh.yaml"
    path.write_text(BASE.replace("dev: false", "dev: true"), encoding="utf-8")
    state = tmp_path / "state"
    env = {**_environ(), LISTEN_HOST_ENV: "0.0.0.0"}  # noqa: S104 - refused in dev mode
    up = run_cli("up", "--config", str(path), "--state", str(state), "--detach", env=env)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "TRUSTMESH_LISTEN_HOST: 0.0.0.0 is not a loopback address" in up.stderr
    assert not state.exists()
    env[LISTEN_HOST_ENV] = "localhost"
    argv = ["-m", "trustmesh.auth", "--config", str(path), "--state", str(state)]
    auth = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert auth.returncode == 2, auth.stderr
    assert "TRUSTMESH_LISTEN_HOST: 'localhost' is not an IP address" in auth.stderr
    assert not state.exists()


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in (LISTEN_HOST_ENV, LISTEN_PORTS_ENV)}
