"""What a service imports to be a zero-trust citizen (grows with the service SDK issue)."""

from trustmesh.sdk.workload import (
    ENDPOINT_ENV,
    JOIN_TOKEN_ENV,
    redeem_join_token,
    redeem_join_token_from_env,
)

__all__ = ["ENDPOINT_ENV", "JOIN_TOKEN_ENV", "redeem_join_token", "redeem_join_token_from_env"]
