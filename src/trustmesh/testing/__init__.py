"""Public test helpers: run trustmesh components in-process for a test or a benchmark."""

from trustmesh.testing.cli import run_cli
from trustmesh.testing.clock import FakeClock
from trustmesh.testing.identity import (
    FixedSVIDSource,
    RunningIdentityServer,
    identity_server_in_thread,
)
from trustmesh.testing.redis import PrivateRedis
from trustmesh.testing.wait import until, until_async

__all__ = [
    "FakeClock",
    "FixedSVIDSource",
    "PrivateRedis",
    "RunningIdentityServer",
    "identity_server_in_thread",
    "run_cli",
    "until",
    "until_async",
]
