"""Public test helpers: run trustmesh components in-process for a test or a benchmark."""

from trustmesh.testing.identity import RunningIdentityServer, identity_server_in_thread

__all__ = ["RunningIdentityServer", "identity_server_in_thread"]
