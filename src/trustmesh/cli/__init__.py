"""The ``trustmesh`` command. Exit codes: 0 success, 1 failure at run time, 2 bad usage/config."""

from __future__ import annotations

import typer

from trustmesh.cli import (
    attack_cmd,
    audit_cmd,
    auth_cmd,
    call_cmd,
    config_cmd,
    docs_cmd,
    gateway_cmd,
    identity_cmd,
    k8s_cmd,
    policy_cmd,
    reload_cmd,
    secrets_cmd,
    stack,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="trustmesh",
    help="Zero-trust security platform for Python microservices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(identity_cmd.app, name="identity")
app.add_typer(identity_cmd.svid_app, name="svid")
app.add_typer(policy_cmd.app, name="policy")
stack.register(app)
reload_cmd.register(app)
call_cmd.register(app)
auth_cmd.register(app)
gateway_cmd.register(app)
secrets_cmd.register(app)
app.add_typer(audit_cmd.app, name="audit")
attack_cmd.register(app)
app.add_typer(k8s_cmd.app, name="k8s")
app.add_typer(docs_cmd.app, name="docs")


def main() -> None:
    app()
