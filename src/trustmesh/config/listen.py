"""Where trustmesh's processes listen: the address every listener binds (``listen.host``),
the address a listener tells others to connect to, and what a deployment pins at run time.

::

    listen: {host: 0.0.0.0}        # default 127.0.0.1: this machine only
    listen: {drain: 30s}           # at SIGTERM, what requests in flight get (default 10s)

Every listener of every component and declared service binds ``listen.host``: the
identity service's discovery API, the provider's mTLS and public listeners, the secrets
service, the audit collector and its console, the gateway's public, internal (mTLS) and
``ext_authz`` listeners (nginx's too, with ``engine: nginx``), each service's mTLS
listener. Metrics stay on 127.0.0.1 whatever it says: they are plain HTTP.

**The address, and what is refused.** An IP literal, IPv4 or IPv6 (a name could resolve
to another address than the one meant): a loopback address, an address of this machine,
or ``0.0.0.0`` / ``::`` (every address). Refused: an address with a zone index
(``fe80::1%eth0``), an IPv6 link-local one (it needs a zone), an IPv4-mapped IPv6 one
(write the IPv4 address), multicast and reserved ones. **A dev-mode declaration
(``dev: true``) listens on loopback only**: dev mode's conveniences — keys sealed by a
file beside them, a secrets service that unseals itself, browser-facing certificates from
a local CA made at start, demo users whose passwords ``up`` prints — are safe only while
nothing beyond the machine can connect, so another address is a config error, not a
warning (fail closed, and say why). Outside dev mode every listener that leaves the
machine is TLS with a certificate the operator declares (each browser-facing listener
needs one then; the others are mTLS with SVIDs) and the plain-HTTP ones stay on loopback:
there is no listener that a non-loopback address would expose without TLS.

**What a listener advertises.** A component writes where it listens (its endpoint file,
``trustmesh status``, discovery): the address it bound, or for a wildcard bind the
loopback address of the same family (``127.0.0.1``, ``::1``), which always connects on
this machine. IPv6 addresses appear in brackets in URLs (RFC 3986 §3.2.2).

**Pinned at run time.** A deployment that learns its address only when it starts (a
Kubernetes pod: ``status.podIP`` through the downward API) or that fixes its ports in its
manifests gives them in the environment of each process that serves, over the
declaration's values (:func:`apply_listen_env`): ``TRUSTMESH_LISTEN_HOST`` (the address,
checked as ``listen.host`` is, the dev-mode rule included) and ``TRUSTMESH_LISTEN_PORTS``
(``KEY=PORT`` items, each ``KEY`` a component listener's port key of :data:`PORT_KEYS`).
A declared service's port is ``TRUSTMESH_PORT`` (``trustmesh.sdk.runtime``), as before.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from trustmesh.config.durations import Duration, format_duration
from trustmesh.errors import ConfigError

if TYPE_CHECKING:
    from trustmesh.config.models import TrustmeshConfig

__all__ = [
    "DRAIN_DEFAULT_SECONDS",
    "HOST_EXPECTED",
    "LISTEN_HOST_ENV",
    "LISTEN_PORTS_ENV",
    "LOOPBACK",
    "MAX_DRAIN",
    "PORT_KEYS",
    "ListenSettings",
    "advertised_host",
    "apply_listen_env",
    "authority",
    "dev_bind_problem",
    "is_loopback",
    "listen_url",
]

LOOPBACK: Final = "127.0.0.1"
#: ``listen.drain``: its default, and the longest a process may take to stop.
DRAIN_DEFAULT_SECONDS: Final = 10
MAX_DRAIN: Final = timedelta(minutes=5)
LISTEN_HOST_ENV: Final = "TRUSTMESH_LISTEN_HOST"
LISTEN_PORTS_ENV: Final = "TRUSTMESH_LISTEN_PORTS"
HOST_EXPECTED: Final = (
    "an IP address of this machine, a loopback address, or 0.0.0.0 / :: for every address, "
    "such as 127.0.0.1"
)
DEV_EXPECTED: Final = (
    "a loopback address (127.0.0.1 or ::1), or dev: false with certificates for the "
    "browser-facing listeners"
)

#: The declaration key of each component listener's port, and where it is in the models.
PORT_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "identity.discovery_port": ("identity", "discovery_port"),
    "auth.port": ("auth", "port"),
    "auth.public_port": ("auth", "public_port"),
    "secrets.port": ("secrets", "port"),
    "audit.port": ("audit", "port"),
    "audit.console.port": ("audit", "console", "port"),
    "gateway.port": ("gateway", "port"),
    "gateway.internal_port": ("gateway", "internal_port"),
}

_PORT_ITEM: Final = re.compile(r"([a-z_.]+)=([0-9]{1,5})")


def _host_problem(value: str) -> str | None:
    """What makes ``value`` unusable as the address to bind, or None."""
    if "%" in value:
        return f"{value!r} has a zone index"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"{value!r} is an IPv4-mapped IPv6 address (write {address.ipv4_mapped})"
    if address.is_multicast:
        return f"{value!r} is a multicast address"
    if address.version == 6 and address.is_link_local:
        return f"{value!r} is an IPv6 link-local address (binding it needs a zone)"
    if address.is_reserved and not (address.is_unspecified or address.is_loopback):
        return f"{value!r} is a reserved address"
    return None


def _check_host(value: str) -> str:
    problem = _host_problem(value)
    if problem is not None:
        raise PydanticCustomError(
            "invalid",
            "{problem} (expected {expected})",
            {"problem": problem, "expected": HOST_EXPECTED},
        )
    return str(ipaddress.ip_address(value))  # one spelling: "0:0::0" is "::"


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def advertised_host(host: str) -> str:
    """The address to connect to a listener bound to ``host``: itself, or for a wildcard
    the loopback address of its family (a wildcard names no address to connect to)."""
    address = ipaddress.ip_address(host)
    if not address.is_unspecified:
        return host
    return LOOPBACK if address.version == 4 else "::1"


def authority(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_url(host: str, port: int, scheme: str = "https") -> str:
    """The URL that reaches a listener bound to ``host`` on ``port``."""
    return f"{scheme}://{authority(advertised_host(host), port)}"


def dev_bind_problem(dev: bool, host: str) -> str | None:
    """Why ``host`` may not be bound by this declaration (dev mode: loopback only), or
    None."""
    if dev and not is_loopback(host):
        return (
            f"{host} is not a loopback address, and dev mode (dev: true) listens on loopback "
            "only: its keys may be sealed by a file beside them, the secrets service unseals "
            "itself and the browser-facing certificates come from a local CA"
        )
    return None


class ListenSettings(BaseModel):
    """Where every listener of the stack binds (the metrics' excepted: loopback)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    host: Annotated[str, AfterValidator(_check_host)] = Field(
        default=LOOPBACK,
        description="The IP address every listener binds: 127.0.0.1 (this machine only), "
        "an address of this machine, or 0.0.0.0 / :: (every address). Loopback only in "
        "dev mode. TRUSTMESH_LISTEN_HOST, where set, replaces it.",
    )

    drain: Duration = Field(
        default=timedelta(seconds=DRAIN_DEFAULT_SECONDS),
        description="At SIGTERM, how long the requests in flight get to finish, every "
        "listener of the process having stopped accepting connections; a request still "
        "running then is cut (503). At most 5m.",
    )

    @field_validator("drain")
    @classmethod
    def _bounded_drain(cls, value: timedelta) -> timedelta:
        if value > MAX_DRAIN:
            raise PydanticCustomError(
                "invalid",
                "{problem} (expected {expected})",
                {
                    "problem": f"{format_duration(value)} is longer than 5m",
                    "expected": "a drain of at most 5m, such as 10s",
                },
            )
        return value

    @property
    def advertised(self) -> str:
        """The address the stack's URLs name (see :func:`advertised_host`)."""
        return advertised_host(self.host)

    def url(self, port: int, scheme: str = "https") -> str:
        return listen_url(self.host, port, scheme)


def _env_host(value: str, dev: bool) -> ListenSettings:
    try:
        settings = ListenSettings(host=value)
    except ValidationError:
        why = _host_problem(value) or f"{value!r} is not an IP address"
        raise _env_error(LISTEN_HOST_ENV, why, HOST_EXPECTED) from None
    refused = dev_bind_problem(dev, settings.host)
    if refused is not None:
        raise _env_error(LISTEN_HOST_ENV, refused, DEV_EXPECTED)
    return settings


def _env_ports(value: str) -> dict[str, int]:
    """``KEY=PORT`` items, separated by spaces or commas."""
    ports: dict[str, int] = {}
    expected = "KEY=PORT items with KEY one of " + ", ".join(PORT_KEYS) + " and PORT 1..65535"
    for item in value.replace(",", " ").split():
        match = _PORT_ITEM.fullmatch(item)
        if match is None or match[1] not in PORT_KEYS or not 1 <= int(match[2]) <= 65535:
            raise _env_error(LISTEN_PORTS_ENV, f"{item!r} does not pin a listener's port", expected)
        if match[1] in ports:
            raise _env_error(LISTEN_PORTS_ENV, f"{match[1]} is pinned twice", "each key once")
        ports[match[1]] = int(match[2])
    return ports


def _env_error(name: str, problem: str, expected: str) -> ConfigError:
    return ConfigError(f"{name}: {problem} (expected {expected})")


def _with(model: Any, path: tuple[str, ...], value: int) -> Any:
    """``model`` with the field at ``path`` set (a section not declared stays as it is:
    nothing listens there)."""
    head, *rest = path
    if not rest:
        return model.model_copy(update={head: value})
    section = getattr(model, head)
    if section is None:
        return model
    return model.model_copy(update={head: _with(section, tuple(rest), value)})


def apply_listen_env(
    config: TrustmeshConfig, environ: Mapping[str, str] | None = None
) -> TrustmeshConfig:
    """``config`` as this process serves it: ``listen.host`` replaced by
    ``TRUSTMESH_LISTEN_HOST`` and the ports ``TRUSTMESH_LISTEN_PORTS`` pins, each checked
    as the declaration's own are (ConfigError naming the variable). What every process
    that serves calls on the declaration it reads — at start, and on each reload, so that
    a reload meets the listeners the process runs."""
    env = os.environ if environ is None else environ
    host, pinned = env.get(LISTEN_HOST_ENV, ""), env.get(LISTEN_PORTS_ENV, "")
    if not host and not pinned:
        return config
    updated: Any = config
    if host:
        updated = updated.model_copy(update={"listen": _env_host(host, config.dev)})
    for key, port in _env_ports(pinned).items():
        updated = _with(updated, PORT_KEYS[key], port)
    result: TrustmeshConfig = updated
    return result
