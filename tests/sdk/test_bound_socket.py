"""The platform's bound sockets are TCP by name, so that every connection accepted on
them answers without Nagle's delay (asyncio sets TCP_NODELAY only on sockets that say they
are TCP): a response written in two parts must not wait out the peer's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from trustmesh.platform.listeners import bound_socket


async def test_accepted_connections_have_nodelay() -> None:
    sock = bound_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    port = sock.getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(seen, 5) != 0
        writer.close()
