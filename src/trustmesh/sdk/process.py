"""What every trustmesh server process does the same way: its command line, its exit
codes (0, 1 at run time, 2 bad config), stopping on SIGTERM/SIGINT, and telling
``trustmesh up`` where it listens through a small JSON file written atomically."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from trustmesh.config import TrustmeshConfig, load_config
from trustmesh.errors import ConfigError, TrustmeshError

__all__ = ["component_main", "until_stopped", "write_json_atomic"]

#: ``run(config, state, config_dir)``: the component's life, until it is told to stop.
Run = Callable[[TrustmeshConfig, Path, Path], Coroutine[Any, Any, None]]


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


async def until_stopped() -> None:
    """Wait for SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def component_main(prog: str, run: Run, argv: list[str] | None = None) -> int:
    """``python -m trustmesh.<component> --config FILE --state DIR``."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    name = prog.removeprefix("trustmesh-")
    try:
        config = load_config(args.config)
        asyncio.run(run(config, args.state.absolute(), args.config.absolute().parent))
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except TrustmeshError as exc:
        print(f"{name}: {exc.detail}", file=sys.stderr)
        return 1
    return 0
