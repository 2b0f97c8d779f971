"""``python -m trustmesh.audit --config FILE --state DIR``: the audit collector process.

Started by ``trustmesh up`` with ``SPIFFE_ENDPOINT_SOCKET`` and a one-time join token for
``spiffe://<td>/trustmesh/audit``; writes where it listens to
``<state>/audit/endpoint.json`` once it serves (and again when its SVID rotates)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Final

from trustmesh.audit.endpoint import endpoint_path
from trustmesh.audit.server import serve_audit
from trustmesh.config import TrustmeshConfig
from trustmesh.platform.process import component_identity, component_main, serve_until_stopped
from trustmesh.platform.suspensions import suspension_feed


async def run(config: TrustmeshConfig, state: Path, config_file: Path) -> None:
    async with (
        component_identity(config, state, "audit") as (source, sink),
        suspension_feed(source, state, "audit") as suspended,
    ):
        running = await serve_audit(
            config, state, source=source, sink=sink, config_file=config_file, suspended=suspended
        )
        settle_gc()
        print(f"audit: {running.url}", flush=True)
        await serve_until_stopped(
            source, endpoint_path(state), lambda: {"url": running.url}, running.stop
        )


#: The cyclic GC's first threshold in the collector: containers allocated, less those
#: freed, before a young collection (CPython's default is 700).
GC_YOUNG: Final = 20_000


def settle_gc() -> None:
    """Once the collector serves: its start-up objects (modules, compiled rules, the
    warmed detector) frozen out of the cyclic GC's reach, and young collections less
    often. A delivery of 500 events parses into ~5,000 containers that live until it is
    stored, detected and answered: at the default threshold each delivery paid several
    young collections, and the promoted events full ones over everything alive (measured:
    the event loop's CPU 72 → 55 µs an event). The events are trees: reference counting
    frees them, and what cycles there are are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def main(argv: list[str] | None = None) -> int:
    return component_main("trustmesh-audit", run, argv)


if __name__ == "__main__":
    sys.exit(main())
