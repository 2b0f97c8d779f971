"""The edge gateway: the single entry point that authenticates, authorizes and
rate-limits every request and forwards it over mTLS with a token the service can trust.

Pure stages (no sockets) live in small modules named after what they decide —
:mod:`routes` (which route), :mod:`headers` (what crosses the edge), :mod:`internal`
(the token the upstream gets) — and the ASGI adapter strings them together.
"""
