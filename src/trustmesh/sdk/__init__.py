"""What a service imports to be a zero-trust citizen: ``run_service``/``serve`` and
``client``. See :mod:`trustmesh.sdk.runtime` for the one-screen tour.

Each name is imported when first used (PEP 562): a process that needs one SDK module
(``trustmesh.sdk.tls``, say, as every platform component and most commands do) does not
import the whole SDK — aiohttp, the runtime, tracing — with it. Two names are also the
names of SDK modules: ``client`` and ``secrets`` are the runtime's functions, here as
they always were, whichever of those modules is imported first."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from trustmesh.errors import AuthenticationError, UnavailableError
    from trustmesh.policy.objects import ObjectPolicy, User
    from trustmesh.sdk.client import ServiceClient
    from trustmesh.sdk.runtime import (
        OnBehalfClient,
        Runtime,
        authorize,
        client,
        current,
        request_token,
        run_service,
        secret,
        secrets,
    )
    from trustmesh.sdk.workload import (
        ENDPOINT_ENV,
        JOIN_TOKEN_ENV,
        redeem_join_token,
        redeem_join_token_from_env,
    )

__all__ = [
    "ENDPOINT_ENV",
    "JOIN_TOKEN_ENV",
    "AuthenticationError",
    "ObjectPolicy",
    "OnBehalfClient",
    "Runtime",
    "ServiceClient",
    "UnavailableError",
    "User",
    "authorize",
    "client",
    "current",
    "redeem_join_token",
    "redeem_join_token_from_env",
    "request_token",
    "run_service",
    "secret",
    "secrets",
]

_HOME: Final = {
    **dict.fromkeys(("AuthenticationError", "UnavailableError"), "trustmesh.errors"),
    **dict.fromkeys(("ObjectPolicy", "User"), "trustmesh.policy.objects"),
    "ServiceClient": "trustmesh.sdk.client",
    **dict.fromkeys(
        (
            "OnBehalfClient",
            "Runtime",
            "authorize",
            "client",
            "current",
            "request_token",
            "run_service",
            "secret",
            "secrets",
        ),
        "trustmesh.sdk.runtime",
    ),
    **dict.fromkeys(
        ("ENDPOINT_ENV", "JOIN_TOKEN_ENV", "redeem_join_token", "redeem_join_token_from_env"),
        "trustmesh.sdk.workload",
    ),
}
#: Names of a function here and of a module of the package: the function keeps the name.
_SHADOWED: Final = frozenset({"client", "secrets"})


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importing trustmesh.sdk.client binds the module to the package's ``client``:
        # not here, where that name is the runtime's function (as when this package
        # imported every name at once, after its modules)
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
