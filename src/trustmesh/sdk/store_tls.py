"""TLS to the shared stores: PostgreSQL with ``sslmode=verify-full`` (or ``verify-ca``)
and Redis over ``rediss://``, their servers holding certificates from the workload CA
(``trustmesh identity server-cert``).

A component checks the server's certificate against the trust bundle that came with its
own SVID and (``verify-full``, and always for Redis) against the host name it dialled,
and presents its SVID as the client certificate, so a server may require one
(PostgreSQL's ``clientcert=verify-ca``, Redis's ``tls-auth-clients yes``). The SVID is
the one the process registers with :func:`present` when it starts (the platform layer
and the SDK runtime do); a connection made after a rotation presents the new one.

Where the URL names a trust of its own (PostgreSQL's ``sslrootcert``, Redis's
``ssl_ca_certs``: a managed server with its own CA), that file is the trust, as libpq
and redis-py take it; the SVID is still presented. A PostgreSQL URL that asks for less
(``sslmode=require``) is left to the driver as written; ``rediss://`` is always verified.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from trustmesh.errors import ConfigError, CryptoError
from trustmesh.sdk.tls import store_client_context
from trustmesh.sdk.x509source import SVIDSource, X509Context

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis
    from sqlalchemy.engine import URL

Pool = TypeVar("Pool", bound="ConnectionPool")

__all__ = ["context", "postgres", "present", "redis_client", "redis_pool"]

#: ``sslmode`` values that verify the server, and whether they check its host name.
_VERIFY: Final = {"verify-full": True, "verify-ca": False}
_LIBPQ_TLS: Final = ("sslmode", "sslrootcert", "sslcert", "sslkey")

_source: SVIDSource | None = None
#: The context last made per (trust file, host check), and the SVID it presents.
_made: dict[tuple[str | None, bool], tuple[X509Context | None, ssl.SSLContext]] = {}


def present(source: SVIDSource | None) -> None:
    """The SVID this process presents to its stores (None: none, at shutdown)."""
    global _source
    _source = source
    _made.clear()


def context(*, trust_file: str | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """The TLS client context for a store connection made now: the current SVID, and
    the bundle it came with (or ``trust_file``). ConfigError when there is neither."""
    current = _source.context if _source is not None else None
    if current is None and trust_file is None:
        raise ConfigError(
            "a store connection verified against the workload CA needs the process's SVID, "
            "and this process has none (or name the server's CA: sslrootcert=, ssl_ca_certs=)"
        )
    made = _made.get((trust_file, check_hostname))
    if made is not None and made[0] is current:
        return made[1]
    try:
        trust = Path(trust_file).read_bytes() if trust_file else None
        ctx = store_client_context(current, trust_pem=trust, check_hostname=check_hostname)
    except (OSError, ssl.SSLError, CryptoError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the store's TLS trust cannot be loaded: {exc}") from None
    _made[(trust_file, check_hostname)] = (current, ctx)
    return ctx


def postgres(url: URL) -> tuple[URL, Callable[[], ssl.SSLContext] | None]:
    """``url`` as the driver takes it, and what makes each connection's TLS context:
    for ``sslmode=verify-full|verify-ca``, the libpq TLS parameters are taken out and
    the context is :func:`context`'s (None for any other mode: the driver's own)."""
    mode = _one(url.query, "sslmode")
    if mode not in _VERIFY:
        return url, None
    if _one(url.query, "sslcert") or _one(url.query, "sslkey"):
        raise ConfigError(
            f"sslmode={mode}: a component presents its own SVID to the database; "
            "remove sslcert and sslkey from the URL"
        )
    made = functools.partial(
        context, trust_file=_one(url.query, "sslrootcert"), check_hostname=_VERIFY[mode]
    )
    return url.difference_update_query(_LIBPQ_TLS), made


def redis_pool(url: str, pool_class: type[Pool] | None = None, **options: Any) -> Pool:
    """A redis-py connection pool (``pool_class``: ``ConnectionPool`` by default) for
    ``url``: over ``rediss://``, each connection verifies the server (host name
    included) against the workload CA (or the URL's ``ssl_ca_certs``) and presents the
    SVID. (redis-py lets the URL's scheme pick the connection class: set after.)"""
    from redis.asyncio import ConnectionPool

    pool = (pool_class or ConnectionPool).from_url(url, **options)
    if url.startswith("rediss://"):
        pool.connection_class = _verified_connection()
    return pool  # type: ignore[return-value]


def redis_client(url: str, **options: Any) -> Redis:
    """A redis-py client on :func:`redis_pool` (closing it closes the pool)."""
    from redis.asyncio import Redis

    return Redis.from_pool(redis_pool(url, **options))


@functools.cache
def _verified_connection() -> type:
    """redis-py's TLS connection, with :func:`context` for its TLS: the URL's
    ``ssl_ca_certs`` is kept as the trust; host name checking is always on. (Made on
    first use: a process without Redis never imports it.)"""
    from redis.asyncio.connection import Connection, SSLConnection

    class VerifiedConnection(SSLConnection):
        def _connection_arguments(self) -> Mapping[str, Any]:
            kwargs = dict(Connection._connection_arguments(self))
            kwargs["ssl"] = context(trust_file=self.ssl_context.ca_certs)
            return kwargs

    return VerifiedConnection


def _one(query: Mapping[str, str | tuple[str, ...]], key: str) -> str | None:
    value = query.get(key)
    if isinstance(value, tuple):
        raise ConfigError(f"the database URL gives {key} more than once")
    return value
