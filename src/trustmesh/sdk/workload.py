"""Client side of the Workload API that py-spiffe does not cover: join-token redemption.

It speaks only the wire protocol (``trustmesh._proto``), never the identity service's
internals, so the same service code runs against SPIRE (where a process is attested by
selectors instead, and no token is handed to it).
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlparse

from grpclib import GRPCError, Status
from grpclib.client import Channel, UnaryUnaryMethod

from trustmesh._proto import workload_pb2 as pb
from trustmesh.errors import PermissionDeniedError, UnavailableError, UsageError

#: The variable py-spiffe and SPIRE use for the Workload API address.
ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"
#: Where ``trustmesh up`` hands a process its one-time join token.
JOIN_TOKEN_ENV = "TRUSTMESH_JOIN_TOKEN"  # noqa: S105 - the variable's name
SECURITY_HEADER = ("workload.spiffe.io", "true")
JOIN_METHOD = "/trustmesh.workload.v1.Join/RedeemJoinToken"


def socket_path(address: str) -> str:
    """``unix:///abs/path`` → ``/abs/path`` (the only form trustmesh serves)."""
    parsed = urlparse(address)
    if parsed.scheme != "unix" or not parsed.path.startswith("/") or parsed.netloc:
        raise UsageError(f"{address!r}: expected unix:///absolute/path")
    return parsed.path


async def redeem_join_token(address: str, token: str, *, timeout: float = 10.0) -> str:
    """Bind this process to the token's SPIFFE ID; return that ID. One use per token."""
    channel = Channel(path=socket_path(address))
    try:
        method = UnaryUnaryMethod(
            channel, JOIN_METHOD, pb.RedeemJoinTokenRequest, pb.RedeemJoinTokenResponse
        )
        reply = await method(
            pb.RedeemJoinTokenRequest(token=token),
            timeout=timeout,
            metadata=[SECURITY_HEADER],
        )
    except GRPCError as exc:
        if exc.status is Status.PERMISSION_DENIED:
            raise PermissionDeniedError("join token refused") from None
        raise UnavailableError(f"Workload API: {exc.status.name}") from None
    except (OSError, TimeoutError) as exc:
        raise UnavailableError(f"Workload API unreachable: {type(exc).__name__}") from None
    finally:
        channel.close()
    return str(reply.spiffe_id)


def redeem_join_token_from_env() -> str | None:
    """If ``trustmesh up`` handed this process a token, redeem it (and forget it)."""
    token = os.environ.pop(JOIN_TOKEN_ENV, None)
    address = os.environ.get(ENDPOINT_ENV)
    if not token:
        return None
    if not address:
        raise UsageError(f"{JOIN_TOKEN_ENV} is set but {ENDPOINT_ENV} is not")
    return asyncio.run(redeem_join_token(address, token))
