"""A service's ``runtime:`` profile: what the SDK's audit hook (:mod:`trustmesh.sdk.guard`)
lets the service's process do once it serves::

    services:
      orders:
        run: shop.orders:app
        runtime:
          mode: enforce            # monitor (the default): record; enforce: record and block
          connect:                 # outbound, besides what is implied (below)
            - "api.stripe.com:443"
            - "10.0.0.0/8:5432"    # a network; "*" as the port: any port
          subprocess: false        # spawn processes (subprocess, os.system, exec, spawn)
          writable: [/var/tmp/orders]   # files it may open for writing (and below)
          deserialize: false       # pickle loads that name a class, marshal.loads
          dynamic_code: false      # eval/exec/compile of text
          native_libraries: false  # ctypes loading a shared library

Held in a service ``trustmesh up`` runs with ``run:`` (the SDK runner installs the
hook); declared on a ``command:`` or ``external`` service it is refused, since nothing
would hold it. Implied, never declared: the services the declaration lets it call (as discovery hands
them out), the platform endpoints ``trustmesh up`` names (the Workload API socket, the
identity provider, the gateway's JWKS, the secrets service, discovery, the audit
collector), its own event log and audit spool. A service declared without ``runtime:``
runs under this profile in ``monitor`` mode: its violations are recorded and nothing is
blocked, which is safe for a service whose needs are not yet known; declare
``mode: enforce`` once its events show what it needs (the demo shop does).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = ["CONNECT_EXPECTED", "ConnectRule", "RuntimeProfile", "parse_connect_rule"]

CONNECT_EXPECTED: Final = (
    '"host:port": a DNS name, an IP address ([v6] in brackets) or a network in CIDR '
    'notation, and a port from 1 to 65535 or "*", such as "api.example.com:443" or '
    '"10.0.0.0/8:5432"'
)
_NAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


class ConnectRule(BaseModel):
    """One parsed ``connect`` item: a name or a network, and a port (None: any)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None


def _problem(problem: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError(
        "runtime", "{problem} (expected {expected})", {"problem": problem, "expected": expected}
    )


def parse_connect_rule(text: str) -> ConnectRule:
    """Parse ``"host:port"``; raise ``ValueError`` saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} has no ':port'")
    if port_text == "*":
        port = None
    elif port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"{port_text!r} is not a port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets")
    try:
        network = ipaddress.ip_network(host, strict=True)
    except ValueError:
        if "/" in host or host.replace(".", "").isdigit():
            raise ValueError(f"{host!r} is not an IP address or network") from None
        if host == "*" or _NAME_RE.fullmatch(host) is None:
            raise ValueError(f"{host!r} is not a lowercase DNS name") from None
        return ConnectRule(host=host, network=None, port=port)
    return ConnectRule(host=None, network=network, port=port)


def _check_connect(value: str) -> str:
    try:
        parse_connect_rule(value)
    except ValueError as exc:
        raise _problem(str(exc), CONNECT_EXPECTED) from None
    return value


def _check_writable(value: str) -> str:
    expected = "an absolute path, such as /var/tmp/orders"
    if not value.startswith("/"):
        raise _problem(f"{value!r} is not an absolute path", expected)
    if "\x00" in value or any(part == ".." for part in value.split("/")):
        raise _problem(f"{value!r} contains '..' or a NUL character", expected)
    if value.rstrip("/") == "":
        raise _problem("'/' would make every file writable", expected)
    return value


class RuntimeProfile(BaseModel):
    """What a service's process may do at run time (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    mode: Literal["monitor", "enforce"] = Field(
        default="monitor",
        description="monitor: a violation is recorded and goes through; enforce: it is "
        "recorded and refused (PermissionError in the service).",
    )
    connect: list[Annotated[str, AfterValidator(_check_connect)]] = Field(
        default_factory=list,
        max_length=256,
        description='Outbound "host:port" the service may reach besides the services it '
        "may call and the platform's endpoints.",
    )
    subprocess: bool = Field(default=False, description="May it start processes?")
    writable: list[Annotated[str, AfterValidator(_check_writable)]] = Field(
        default_factory=list,
        max_length=64,
        description="Absolute paths it may open for writing (a directory: all below it).",
    )
    deserialize: bool = Field(
        default=False,
        description="May it unpickle objects that name a class or function, or "
        "marshal.loads? (An in-process hook cannot tell network data from other data: "
        "this covers every such load.)",
    )
    dynamic_code: bool = Field(
        default=False, description="May it eval/exec/compile text (outside the import system)?"
    )
    native_libraries: bool = Field(
        default=False, description="May it load shared libraries with ctypes once serving?"
    )

    @property
    def connect_rules(self) -> tuple[ConnectRule, ...]:
        return tuple(parse_connect_rule(item) for item in self.connect)
