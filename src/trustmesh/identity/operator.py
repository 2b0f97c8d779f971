"""The operator's way in: one-time join tokens for ``spiffe://<td>/trustmesh/operator``,
on a unix socket only the owner of the state directory can reach.

The admin APIs (the identity service's, the provider's, the gateway's) answer the
operator's SVID. The CLI gets that SVID as any process gets one, by redeeming a one-time
join token over the Workload API; this socket is where that token comes from, so that
no command writes the identity service's store. The operator is the owner of the state
directory, as before: its files (the store; in dev mode the sealing key) are the
owner's, and whoever can write them could always make itself any workload.

* The socket is ``<state>/private/operator.sock``: its directory is 0700 and the socket
  0600, so only the owner (or root) can connect at all.
* The kernel's word on the peer (``SO_PEERCRED``) must name this process's own uid;
  anything else is refused, recorded as an event, and hung up on.
* Each accepted connection gets one token, valid for :data:`OPERATOR_TOKEN_TTL`, as one
  JSON line ``{"token", "spiffe_id", "expires_at"}``, and is closed; nothing is read from
  the peer. The token is made like any other join token: only its hash is stored, and an
  event records it; redeeming it binds the identity to the redeeming process alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from trustmesh import events
from trustmesh.errors import TrustmeshError
from trustmesh.reasons import Reason

__all__ = ["OPERATOR_TOKEN_TTL", "OperatorSocket"]

#: A token from the socket is redeemed at once, by the process that asked for it.
OPERATOR_TOKEN_TTL = dt.timedelta(minutes=1)
_UCRED = struct.Struct("3i")

#: ``mint(now)``: a join token for the operator, valid until ``now + OPERATOR_TOKEN_TTL``.
Mint = Callable[[dt.datetime], str]


class OperatorSocket:
    """Hands the owner's processes a join token for ``operator`` (a SPIFFE ID)."""

    def __init__(
        self,
        path: Path,
        operator: str,
        mint: Mint,
        sink: events.EventSink,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.path = path
        self.operator = operator
        self._mint = mint
        self._recorder = events.Recorder(sink, component="identity")
        self._clock = clock
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen (the directory exists, 0700; a stale socket file is gone)."""
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self._answer(writer)).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the peer went away: it gets nothing, and nothing is owed
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _answer(self, writer: asyncio.StreamWriter) -> dict[str, str]:
        sock: socket.socket = writer.get_extra_info("socket")
        pid, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if uid != os.geteuid():
            why = f"the operator socket refused uid {uid} (pid {pid}): not the service's own"
            self._recorder.record(Reason.ADMIN_DENIED, why, attributes={"action": "operator-token"})
            return {"error": "forbidden", "message": "not the state directory's owner"}
        now = self._clock()
        try:
            token = self._mint(now)
        except TrustmeshError as exc:
            return {"error": exc.code, "message": exc.detail}
        return {
            "token": token,
            "spiffe_id": self.operator,
            "expires_at": (now + OPERATOR_TOKEN_TTL).isoformat(),
        }
