"""What a service imports to be a zero-trust citizen: ``run_service``/``serve`` and
``client``. See :mod:`trustmesh.sdk.runtime` for the one-screen tour."""

from trustmesh.sdk.runtime import Runtime, client, current, run_service
from trustmesh.sdk.workload import (
    ENDPOINT_ENV,
    JOIN_TOKEN_ENV,
    redeem_join_token,
    redeem_join_token_from_env,
)

__all__ = [
    "ENDPOINT_ENV",
    "JOIN_TOKEN_ENV",
    "Runtime",
    "client",
    "current",
    "redeem_join_token",
    "redeem_join_token_from_env",
    "run_service",
]
