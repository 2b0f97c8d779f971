"""``python -m trustmesh.identity --config FILE --state DIR``: the identity service process."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from trustmesh.config import load_config
from trustmesh.config.listen import apply_listen_env
from trustmesh.config.switches import check_switches
from trustmesh.identity.server import serve_until_signalled
from trustmesh.platform.process import exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustmesh-identity")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-slot", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def serve() -> None:
        config = apply_listen_env(load_config(args.config))  # where the deployment pins
        check_switches(config)  # test-only switches need the environment's consent
        asyncio.run(
            serve_until_signalled(
                config,
                args.state.absolute(),
                config_path=args.config.absolute(),
                worker_fd=args.worker_fd,
                report_fd=args.report_fd,
                worker_slot=args.worker_slot,
            )
        )

    return exit_code("identity", serve)


if __name__ == "__main__":
    sys.exit(main())
