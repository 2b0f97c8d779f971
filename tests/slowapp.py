"""A slow upstream for the tests that run a stack as real processes (the supervisor of
``trustmesh up``): an ASGI app written beside the declaration as a module of its own,
which a service of the declaration runs (``run: "<module>:app"``)."""

from __future__ import annotations

from pathlib import Path

#: The app, after its imports and its two settings (``SLOW``, ``DELAY``).
_APP = """

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"].startswith(SLOW):
        await asyncio.sleep(float(scope["path"].rsplit("/", 1)[1]) if DELAY is None else DELAY)
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def write_slow_app(module: Path, slow: str, delay: float | None = None) -> None:
    """Write to ``module`` an ASGI app that answers every request ``200`` with its path as
    the body; a path that starts with ``slow`` answers ``delay`` seconds late or, with no
    ``delay``, as many seconds late as its last segment says (``{slow}1.5``)."""
    module.write_text(f"import asyncio\n\nSLOW = {slow!r}\nDELAY = {delay!r}\n" + _APP)
