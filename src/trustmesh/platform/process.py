"""What every trustmesh server process does the same way: its command line, its exit
codes (0, 1 at run time, 2 bad config), stopping on SIGTERM/SIGINT, and telling
``trustmesh up`` where it listens through a small JSON file written atomically.

Stopping is a drain (:mod:`trustmesh.sdk.drain`): at the signal every listener stops
accepting connections, the requests in flight get ``listen.drain`` seconds to finish
(those still running are cut with a ``503``), then the component stops what it runs and
its events are flushed to the collector, or stay spooled for its next start; it exits 0."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from trustmesh import events
from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.config.listen import apply_listen_env
from trustmesh.config.switches import check_switches
from trustmesh.errors import ConfigError, TrustmeshError, UnavailableError
from trustmesh.platform.endpoints import stopped_endpoint
from trustmesh.sdk import drain, spans, store_tls
from trustmesh.sdk.delivery import audit_sink_from_env
from trustmesh.sdk.runtime import EVENTS_ENV
from trustmesh.sdk.workload import JOIN_TOKEN_ENV, redeem_join_token
from trustmesh.sdk.x509source import X509Context, X509Source, record_expiring

__all__ = [
    "component_identity",
    "component_main",
    "serve_until_stopped",
    "until_stopped",
    "write_json_atomic",
]

#: ``run(config, state, config_file)``: the component's life, until it is told to stop
#: (``config_file``, absolute: to find what it names, and to read it again on a reload).
Run = Callable[[TrustmeshConfig, Path, Path], Coroutine[Any, Any, None]]


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


async def until_stopped() -> None:
    """Wait for SIGTERM or SIGINT; then begin to drain every listener of the process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    drain.begin()


def component_main(prog: str, run: Run, argv: list[str] | None = None) -> int:
    """``python -m trustmesh.<component> --config FILE --state DIR``: the declaration as
    the environment deploys it (:func:`~trustmesh.config.listen.apply_listen_env`)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)

    def main() -> None:
        config = apply_listen_env(load_config(args.config))
        check_switches(config)  # test-only switches need the environment's consent
        drain.configure(config.listen.drain.total_seconds())
        asyncio.run(run(config, args.state.absolute(), args.config.absolute()))

    return exit_code(prog.removeprefix("trustmesh-"), main)


def exit_code(name: str, main: Callable[[], None]) -> int:
    """Run a component's ``main``: 0 when it ends, 2 for a bad declaration (every
    problem on stderr), 1 for any other failure it reports (one line, named)."""
    try:
        main()
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except TrustmeshError as exc:
        print(f"{name}: {exc.detail}", file=sys.stderr)
        return 1
    return 0


@contextlib.asynccontextmanager
async def component_identity(
    config: TrustmeshConfig, state: Path, component: str, *, instance: str | None = None
) -> AsyncIterator[tuple[X509Source, events.EventSink]]:
    """The component's SVID (a one-time join token from ``up`` redeemed first) and its
    event sink: the event log (``TRUSTMESH_EVENTS``, else
    ``<state>/events/<component>.jsonl``) and, when ``up`` names the audit collector
    (``TRUSTMESH_AUDIT_URL``), delivery to it through ``<state>/spool/<component>/``
    (:mod:`trustmesh.sdk.delivery`; not for the collector itself). What is not
    delivered when the component stops stays spooled for its next start. With a
    collector, the component's spans go to it too (:mod:`trustmesh.sdk.spans`: the
    tracer is installed for the process). ``instance``: this process's name where
    several run as one component (``gateway-2``): its event log and spool are its own."""
    name = instance or component
    address = os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not address:
        raise UnavailableError("SPIFFE_ENDPOINT_SOCKET is not set")
    token = os.environ.pop(JOIN_TOKEN_ENV, None)
    if token:
        await redeem_join_token(address, token)
    source = X509Source(address, spiffe_id=config.component_spiffe_id(component))
    await source.start()
    store_tls.present(source)  # the SVID its PostgreSQL and Redis connections show
    log_sink = events.JsonLinesSink(
        Path(os.environ.get(EVENTS_ENV) or state / "events" / f"{name}.jsonl")
    )
    try:
        audit = audit_sink_from_env(source, config, state, name, log=log_sink)
    except BaseException:
        log_sink.close()
        await source.close()
        raise
    written: events.EventSink = log_sink if audit is None else audit  # it writes the log
    # an SVID not renewed in time (the identity service down) is said, before it expires
    recorder = events.Recorder(written, component=component, spiffe_id=source.context.spiffe_id)
    source.on_expiring(record_expiring(recorder))
    drain.on_cut(drain.record_cuts(recorder))
    tracer = spans.tracer_from_env(source, config, state, component)
    spans.install(tracer)
    try:
        yield source, written
    finally:
        if audit is not None:
            await asyncio.to_thread(audit.close, 5.0)
        if tracer is not None:
            spans.install(None)
            await asyncio.to_thread(tracer.shutdown)
        store_tls.present(None)
        drain.on_cut(None)
        await source.close()
        log_sink.close()


async def serve_until_stopped(
    source: X509Source,
    endpoint: Path,
    describe: Callable[[], dict[str, Any]],
    stop: Callable[[], Awaitable[None]],
) -> None:
    """Say where the component listens (``describe()``, with its SVID's facts) in
    ``endpoint`` — again at each rotation — until SIGTERM/SIGINT; then move the file
    aside (:func:`stopped_endpoint`: where the supervisor finds the ports to start it on
    again) and ``stop()``."""

    def write(context: X509Context) -> None:
        doc = {
            **describe(),
            "spiffe_id": context.spiffe_id,
            "cert_expires": context.not_after.isoformat(),
            "pid": os.getpid(),
            "updated_at": time.time(),
        }
        write_json_atomic(endpoint, doc)

    endpoint.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write(source.context)
    source.subscribe(write)
    try:
        await until_stopped()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.replace(endpoint, stopped_endpoint(endpoint))  # gone: it must not look alive
        await stop()
