"""What a service imports to be a zero-trust citizen: ``run_service``/``serve`` and
``client``. See :mod:`trustmesh.sdk.runtime` for the one-screen tour."""

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
