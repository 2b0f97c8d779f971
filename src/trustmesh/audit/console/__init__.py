"""The web console: services and their identities, certificate expiry, the declared
call graph with live decisions, live security events, alerts, traces and the attack
posture — for admins signed in at the identity provider. Served by the audit
collector's process (:func:`~trustmesh.audit.console.server.start_console`)."""

from __future__ import annotations

__all__: list[str] = []
